"""The rank processes of one group, seen from the parent: spawned, watched, and released
however the group ends (teardown, garbage collection, interpreter exit)."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from . import warm_start
from .host import neutral_main
from .monitor import DeathWatch
from .protocol import Ready, Shutdown
from .shipping import dumps
from .spec import LOOPBACK_ENV, GroupSpec
from .worker import WorkerConfig, worker_main


@dataclass
class RankProcess:
    """One rank: its process, its message pipe, the death pipe it watches, what it said when ready."""

    config: WorkerConfig
    process: Any
    conn: Any
    death_conn: Any
    ready: Ready | None = None

    @property
    def rank(self) -> int:
        return self.config.rank

    def death(self, when: str) -> str:
        """How the process ended, for a message: 'exited with code 1' / 'was killed by signal 9'."""
        code = self.process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return f"Worker rank {self.rank} (pid {self.process.pid}, {self.config.device}) {how} {when}"


class Processes:
    """The ranks of one group and what comes with them: pipes, the death watch, the rendezvous
    folder. ``release`` stops them all; it is idempotent, so a finalizer may call it again."""

    def __init__(self) -> None:
        self.ranks: list[RankProcess] = []
        self.watch: DeathWatch | None = None
        self.store_dir: str | None = None

    def spawn(self, spec: GroupSpec, mp_ctx, store_dir: str, stop_event) -> None:
        """Start one process per device (they join the group on their own), then the death watch."""
        self.store_dir = store_dir
        store_path = os.path.join(store_dir, "store")
        # A spawned rank starts with this process's environment; one forked by the warm fork server has the
        # server's (from ComfyUI's start), so it gets this one's whole environment as it is now.
        warm = mp_ctx is warm_start.context()
        env = tuple(os.environ.items()) if warm else tuple((k, os.environ[k]) for k in ("PYTHONPATH",)
                                                          if k in os.environ)
        env += LOOPBACK_ENV
        spawned_at = time.time()
        with neutral_main():
            for rank, device in enumerate(spec.devices):
                config = WorkerConfig(rank, spec.world_size, device, spec.resolved_backend, store_path,
                                      spec.collective_timeout_s, spec.threads_per_rank, env, spec.worker_init,
                                      spec.worker_init_data, spec.log_level, spawned_at, spec.parent_poll_s,
                                      warm=warm)
                parent_conn, child_conn = mp_ctx.Pipe(duplex=True)
                death_r, death_w = mp_ctx.Pipe(duplex=False)
                proc = mp_ctx.Process(target=worker_main, name=f"cfgp-rank{rank}",
                                      args=(config, child_conn, death_r, stop_event), daemon=True)
                proc.start()
                child_conn.close()
                death_r.close()
                self.ranks.append(RankProcess(config, proc, parent_conn, death_w))
        self.watch = DeathWatch([r.process for r in self.ranks])

    def release(self, ask_s: float, terminate_s: float, kill_s: float) -> None:
        """Ask every rank to exit (Shutdown), then SIGTERM after `ask_s`, then SIGKILL after
        `terminate_s` (reaped within `kill_s`); close the pipes and the watch; remove the folder."""
        for r in self.ranks:
            try:
                if r.process.is_alive():
                    r.conn.send_bytes(dumps(Shutdown()))
            except (OSError, ValueError, BrokenPipeError):
                pass
        self._join_all(ask_s)
        for r in self.ranks:
            if r.process.is_alive():
                r.process.terminate()
        self._join_all(terminate_s)
        for r in self.ranks:
            if r.process.is_alive():
                r.process.kill()
                r.process.join(kill_s)
        for r in self.ranks:
            for c in (r.conn, r.death_conn):
                try:
                    c.close()
                except OSError:
                    pass
        if self.watch is not None:
            self.watch.close()
        if self.store_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None

    def _join_all(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for r in self.ranks:
            r.process.join(max(0.0, deadline - time.monotonic()))
