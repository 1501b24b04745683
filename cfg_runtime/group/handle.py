"""The worker group handle, seen from the ComfyUI process.

The parent is not a member of the process group: it talks to each rank over a pipe
and never enters a collective, so a dead or hung rank can't freeze it. Every wait has
a deadline; process sentinels are watched; after any fault the group is torn down and
the next job starts a fresh one.
"""
from __future__ import annotations

import itertools
import logging
import math
import multiprocessing as mp
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable

from ..errors import (CFGParallelError, GroupConfigError, GroupStartError, JobFailedError, JobInterrupted, JobTimeoutError,
                      ShippingError, WorkerDiedError)
from .host import (fd_count, make_store_dir, neutral_main, release_uncollected_handles, sweep_stale_stores,
                   check_host_memory)
from .rank_os import raise_fd_limit, use_pid_named_mp_tempdir
from .shipping import dumps
from .spec import LOOPBACK_ENV, GroupSpec, check_device_backend
from .worker import WorkerConfig, worker_main

log = logging.getLogger("cfg_parallel")


def _is_out_of_memory(failure: dict) -> bool:
    """Whether a rank's failure is an allocation failure (CUDA OOM, or a host allocation refused)."""
    message = str(failure.get("message", "")).lower()
    return failure.get("type") in ("OutOfMemoryError", "MemoryError") or "out of memory" in message \
        or "can't allocate memory" in message



@dataclass
class _Rank:
    config: WorkerConfig
    process: Any
    conn: Any
    death_conn: Any
    info: dict = field(default_factory=dict)


@dataclass
class _Flight:
    """A job on its way through the ranks: what came back so far and when."""

    job_id: int
    t0: float
    outcome: dict = field(default_factory=dict)
    last_event: float = field(default_factory=time.monotonic)
    progressed: bool = False  # before the first progress event, the (longer) load deadline applies
    stop_sent_at: float | None = None
    first_error_at: float | None = None


@dataclass(frozen=True)
class JobResult:
    value: Any
    summaries: tuple[dict, ...]
    seconds: float


class WorkerGroup:
    """One process per device; persistent across jobs until shut down or faulted."""

    _ids = itertools.count()

    def __init__(self, spec: GroupSpec) -> None:
        if spec.world_size < 1:
            raise GroupConfigError("A worker group needs at least one device.")
        check_device_backend(spec.devices, spec.backend)
        for name in ("start_timeout_s", "step_timeout_s", "load_timeout_s", "collective_timeout_s",
                     "interrupt_grace_s", "detach_after_s", "detach_mid_sampling_s"):
            value = getattr(spec, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise GroupConfigError(f"{name} must be a positive number of seconds, got {value!r}.")
        self.spec = spec
        self.ranks: list[_Rank] = []
        self.state = "new"  # new -> starting -> ready -> (failed | closed)
        self.last_error = ""
        self.jobs_run = 0
        self.last_job: dict = {}
        self.facts: dict = {}  # what the parent knows the ranks hold (e.g. the loaded model's token)
        self._store_dir: str | None = None
        self._ctx = mp.get_context("spawn")
        self._stop_event = None
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._pending: _Flight | None = None  # an interrupted job the ranks are still finishing
        self._fd_baseline: dict[int, int] = {}  # pid -> open fds after the first job (model loaded)

    # --- lifecycle -------------------------------------------------------
    def start(self, interrupt_requested: Callable[[], bool] | None = None) -> None:
        """Spawn the ranks and wait until every one has joined the group."""
        self.spawn()
        self.await_ready(interrupt_requested)

    def spawn(self) -> None:
        """Start the rank processes and return at once (state 'starting'); await_ready() waits for them."""
        import torch.multiprocessing  # noqa: F401  (tensor sharing through pipes)

        check_host_memory(self.spec)
        raise_fd_limit()  # sending a model's weights holds about two fds per tensor until the ranks take them
        sweep_stale_stores()
        self._store_dir = make_store_dir()
        use_pid_named_mp_tempdir(keep_existing=True)  # a killed ComfyUI's folder is swept later
        store_path = os.path.join(self._store_dir, "store")
        self._stop_event = self._ctx.Event()
        backend = self.spec.resolved_backend
        env = LOOPBACK_ENV + tuple((k, os.environ[k]) for k in ("PYTHONPATH",) if k in os.environ)
        self._t0 = time.monotonic()
        self.state = "starting"
        log.info("cfg-parallel: starting %d rank(s) on %s (%s)", self.spec.world_size, ", ".join(self.spec.devices),
                 backend)
        try:
            with neutral_main():
                for rank, device in enumerate(self.spec.devices):
                    config = WorkerConfig(rank, self.spec.world_size, device, backend, store_path,
                                          self.spec.collective_timeout_s, self.spec.threads_per_rank, env,
                                          self.spec.worker_init)
                    parent_conn, child_conn = self._ctx.Pipe(duplex=True)
                    death_r, death_w = self._ctx.Pipe(duplex=False)
                    proc = self._ctx.Process(target=worker_main, name=f"cfgp-rank{rank}",
                                             args=(config, child_conn, death_r, self._stop_event), daemon=True)
                    proc.start()
                    child_conn.close()
                    death_r.close()
                    self.ranks.append(_Rank(config, proc, parent_conn, death_w))
        except BaseException:
            self.teardown("could not spawn the ranks")
            raise

    def await_ready(self, interrupt_requested: Callable[[], bool] | None = None) -> None:
        """Wait until every rank reported ready. An interrupt returns within a poll (0.05 s) with
        JobInterrupted and leaves the ranks starting, so the next prompt does not start them again."""
        if self.state != "starting":
            return
        try:
            self._await_ready(self._t0, interrupt_requested)
        except JobInterrupted:
            raise
        except BaseException:
            self.teardown("start-up failed")
            raise
        self.state = "ready"
        log.info("cfg-parallel group ready: %d rank(s) on %s (%s) in %.1f s", self.spec.world_size,
                 ", ".join(self.spec.devices), self.spec.resolved_backend, time.monotonic() - self._t0)

    def _await_ready(self, t0: float, interrupt_requested: Callable[[], bool] | None = None) -> None:
        pending = {id(r.conn): r for r in self.ranks if not r.info}
        while pending:
            if interrupt_requested is not None and interrupt_requested():
                raise JobInterrupted("Interrupted while the worker group was starting; the ranks keep starting in "
                                     "the background, so the next prompt does not start them again.")
            left = self.spec.start_timeout_s - (time.monotonic() - t0)
            if left <= 0:
                raise GroupStartError(
                    f"Worker group did not start within {self.spec.start_timeout_s:.0f} s "
                    f"(ranks {[r.config.rank for r in pending.values()]} never reported ready).")
            ready = wait_any([r.conn for r in pending.values()] + [r.process.sentinel for r in self.ranks],
                             timeout=min(left, 0.05))
            for obj in ready:
                rank = pending.get(id(obj))
                if rank is None:
                    dead = next((r for r in self.ranks if r.process.sentinel == obj), None)
                    if dead is not None and id(dead.conn) in pending and dead.conn.poll():
                        continue  # its last message (probably the error) is read first
                    if dead is not None:
                        raise GroupStartError(f"Rank {dead.config.rank} ({dead.config.device}) exited during start-up "
                                              f"with code {dead.process.exitcode}.")
                    continue
                try:
                    kind, payload = rank.conn.recv()
                except (EOFError, OSError):
                    raise GroupStartError(f"Rank {rank.config.rank} ({rank.config.device}) exited during start-up "
                                          f"with code {rank.process.exitcode}.") from None
                if kind == "start_error":
                    raise GroupStartError(f"Rank {rank.config.rank} ({rank.config.device}) could not join the group: "
                                          f"{payload['type']}: {payload['message']}")
                rank.info = payload
                del pending[id(obj)]

    def usable(self) -> bool:
        """Starting or ready, with every process alive."""
        return self.state in ("starting", "ready") and self._processes_running()

    def alive(self) -> bool:
        return self.state == "ready" and self._processes_running()

    def _processes_running(self) -> bool:
        """Every rank process runs. The sentinel (closed when the process ends) is asked as well as
        waitpid: a rank that something else reaped would otherwise look alive forever."""
        if not all(r.process.is_alive() for r in self.ranks):
            return False
        return not wait_any([r.process.sentinel for r in self.ranks], timeout=0)

    def teardown(self, reason: str = "") -> None:
        """Stop every rank: ask, then SIGTERM, then SIGKILL. Idempotent."""
        if reason:
            self.last_error = reason
        for r in self.ranks:
            try:
                if r.process.is_alive():
                    r.conn.send_bytes(dumps(("shutdown",)))
            except (OSError, ValueError, BrokenPipeError):
                pass
        deadline = time.monotonic() + (3.0 if not reason else 0.5)
        for r in self.ranks:
            r.process.join(max(0.0, deadline - time.monotonic()))
        for r in self.ranks:
            if r.process.is_alive():
                r.process.terminate()
        deadline = time.monotonic() + 3.0
        for r in self.ranks:
            r.process.join(max(0.0, deadline - time.monotonic()))
        for r in self.ranks:
            if r.process.is_alive():
                r.process.kill()
                r.process.join(5.0)
        for r in self.ranks:
            for c in (r.conn, r.death_conn):
                try:
                    c.close()
                except OSError:
                    pass
        if self._store_dir:
            shutil.rmtree(self._store_dir, ignore_errors=True)
            self._store_dir = None
        if reason:
            release_uncollected_handles()
            sweep_stale_stores()  # what the killed ranks left (their multiprocessing folders)
        self.state = "failed" if reason else "closed"

    def fd_leak(self) -> str:
        """Why a rank holds too many open fds ('' when none does). A local process can make a rank
        leak one fd per connection to its gloo port (accepted, never closed): the group is then
        respawned between jobs, long before the rank reaches its fd limit and aborts."""
        for r in self.ranks:
            base = self._fd_baseline.get(r.process.pid)
            now = fd_count(r.process.pid)
            if base is not None and now is not None and now > base + self.spec.fd_margin:
                return (f"rank {r.config.rank} (pid {r.process.pid}) holds {now} open fds, {now - base} more than "
                        f"after its first job (connections to its gloo port leak them)")
        return ""

    def pids(self) -> list[int]:
        return [r.process.pid for r in self.ranks if r.process.pid]

    # --- jobs ----------------------------------------------------------------
    def run(self, job: Any, on_progress: Callable[[Any], None] | None = None,
            interrupt_requested: Callable[[], bool] | None = None) -> JobResult:
        """Run `job.run(ctx)` on every rank; return rank 0's value. Never blocks past a deadline."""
        with self._lock:
            self.settle(interrupt_requested)
            if not self.alive():
                raise GroupStartError(f"The worker group is not running ({self.last_error or self.state}); "
                                      f"start it first.")
            if interrupt_requested is not None and interrupt_requested():  # e.g. during the model's capture
                raise JobInterrupted("Interrupted before the job was sent to the ranks.")
            self._stop_event.clear()
            job_id = self.jobs_run
            self.jobs_run += 1
            t0 = time.monotonic()
            for r in self.ranks:
                try:
                    blob = dumps(("job", job_id, dumps(job)))
                except Exception as exc:
                    raise ShippingError(f"The job cannot be sent to the workers: {type(exc).__name__}: {exc}") from None
                try:
                    r.conn.send_bytes(blob)
                except (OSError, BrokenPipeError) as exc:
                    self.teardown(f"could not send the job to rank {r.config.rank}: {exc}")
                    raise WorkerDiedError(f"Rank {r.config.rank} is gone ({exc}); the group was shut down and "
                                          f"will be restarted by the next job.") from None
            return self._collect(_Flight(job_id, t0), on_progress, interrupt_requested)

    def settle(self, interrupt_requested: Callable[[], bool] | None = None) -> None:
        """Wait for the ranks to finish a job that was interrupted before they stopped (a model
        load, a long step), under the same deadlines as a running job. A fault tears the group
        down; another interrupt returns at once and leaves the job pending."""
        flight = self._pending
        if flight is None:
            return
        while len(flight.outcome) < len(self.ranks):
            if interrupt_requested is not None and interrupt_requested():
                raise JobInterrupted("Interrupted while the ranks were finishing the previous, interrupted job.")
            now = time.monotonic()
            if flight.progressed and now - flight.stop_sent_at > self.spec.interrupt_grace_s:
                self._pending = None
                self.teardown(f"ranks did not stop within {self.spec.interrupt_grace_s:.0f} s of an interrupt")
                return
            try:
                self._check_deadlines(flight)
                for _ in self._receive(flight):
                    pass  # progress of a job that nobody waits for
            except CFGParallelError as exc:  # the group was torn down; the next job starts a new one
                log.warning("cfg-parallel: the interrupted job ended in a fault: %s", exc)
                self._pending = None
                return
        self._pending = None
        errors = [p for k, p in flight.outcome.values() if k == "job_error"]
        if errors:
            log.warning("cfg-parallel: the interrupted job failed on rank %s after the interrupt: %s: %s",
                        errors[0]["rank"], errors[0]["type"], errors[0]["message"])

    def _receive(self, flight: "_Flight", timeout: float = 0.05) -> list:
        """Read what the ranks sent within `timeout`; record outcomes; return progress payloads."""
        by_conn = {id(r.conn): r for r in self.ranks}
        watch = [r.conn for r in self.ranks if r.config.rank not in flight.outcome]
        progress = []
        for obj in wait_any(watch + [r.process.sentinel for r in self.ranks], timeout=timeout):
            rank = by_conn.get(id(obj))
            if rank is None:
                self._check_deaths(flight.outcome)
                continue
            try:
                kind, payload = rank.conn.recv()
            except (EOFError, OSError):
                self._check_deaths(flight.outcome)
                continue
            flight.last_event = time.monotonic()
            if kind == "progress":
                flight.progressed = True
                progress.append(payload)
                continue
            if payload.get("job") != flight.job_id:
                continue
            flight.outcome[rank.config.rank] = (kind, payload)
            if kind == "job_error" and flight.first_error_at is None:
                flight.first_error_at = time.monotonic()
        return progress

    def _check_deadlines(self, flight: "_Flight") -> None:
        now = time.monotonic()
        if flight.first_error_at is not None and now - flight.first_error_at > 10.0:
            self._fail_job(flight.outcome, teardown=True)
        limit = self.spec.step_timeout_s if flight.progressed else max(self.spec.step_timeout_s,
                                                                       self.spec.load_timeout_s)
        if now - flight.last_event > limit:
            waiting = [r.config.rank for r in self.ranks if r.config.rank not in flight.outcome]
            phase = "between steps" if flight.progressed else "while loading the model and running the first step"
            self.teardown("step timeout")
            raise JobTimeoutError(
                f"No progress for {limit:.0f} s {phase} (ranks {waiting} still busy); the group was shut down "
                f"and will be restarted by the next job. Raise the step timeout for very slow steps.")

    def _collect(self, flight: "_Flight", on_progress, interrupt_requested) -> JobResult:
        callback_error: BaseException | None = None  # e.g. ComfyUI's interrupt, raised by its progress hook
        outcome = flight.outcome
        while len(outcome) < len(self.ranks):
            now = time.monotonic()
            if interrupt_requested is not None and flight.stop_sent_at is None and interrupt_requested():
                self._stop_event.set()
                flight.stop_sent_at = now
            detach_s = self.spec.detach_mid_sampling_s if flight.progressed else self.spec.detach_after_s
            if flight.stop_sent_at is not None and now - flight.stop_sent_at > detach_s:
                # The ranks are loading the model or inside a long step: let them finish that in the
                # background (they stop at their next model evaluation) and keep the group.
                self._pending = flight
                log.info("cfg-parallel: interrupted %s; the ranks finish it in the background",
                         "during a step" if flight.progressed else "while the ranks load the model")
                if callback_error is not None:
                    raise callback_error
                raise JobInterrupted("Interrupted " + ("during a step" if flight.progressed else
                                                       "while the ranks were loading the model") +
                                     "; they finish it in the background and keep it for the next prompt.")
            self._check_deadlines(flight)
            for payload in self._receive(flight):
                if on_progress is not None and callback_error is None:
                    try:
                        on_progress(payload)
                    except BaseException as exc:  # stop the ranks first, then re-raise it
                        callback_error = exc
                        if flight.stop_sent_at is None:
                            self._stop_event.set()
                            flight.stop_sent_at = time.monotonic()
        kinds = {k for k, _ in outcome.values()}
        if callback_error is not None:
            raise callback_error
        if "job_error" in kinds:
            self._fail_job(outcome, teardown=False)
        if "interrupted" in kinds:
            step = next((p.get("step") for k, p in outcome.values() if k == "interrupted"), None)
            raise JobInterrupted(f"Interrupted at step {step}; all ranks stopped together.", step=step)
        if not self._fd_baseline:
            self._fd_baseline = {pid: n for pid, n in ((p, fd_count(p)) for p in self.pids()) if n is not None}
        summaries = tuple(outcome[r][1].get("summary", {}) for r in range(len(self.ranks)))
        self.last_job = {"seconds": round(time.monotonic() - flight.t0, 3), "per_rank": summaries}
        return JobResult(outcome[0][1]["value"], summaries, time.monotonic() - flight.t0)

    def _fail_job(self, outcome: dict, teardown: bool) -> None:
        errors = [p for k, p in outcome.values() if k == "job_error"]
        origin = next((e for e in errors if not e.get("peer")), errors[0])
        if teardown:
            missing = [r.config.rank for r in self.ranks if r.config.rank not in outcome]
            self.teardown(f"rank {origin['rank']} failed; ranks {missing} did not finish")
        text = f"{origin['type']} on rank {origin['rank']}: {origin['message']}"
        if _is_out_of_memory(origin):
            text = (f"Rank {origin['rank']} ran out of memory: lower the resolution, frame count or batch size, run "
                    f"fewer ranks per device, or free memory on it (the group stays up). "
                    f"{text[:1500]}")
        exc = JobFailedError(text)
        exc.remote_traceback = origin.get("traceback", "")
        exc.remote_type = origin["type"]
        raise exc

    def _check_deaths(self, outcome: dict) -> None:
        for r in self.ranks:
            if not r.process.is_alive():
                code = r.process.exitcode
                how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
                msg = (f"Worker rank {r.config.rank} (pid {r.process.pid}, {r.config.device}) {how} during the job; "
                       f"the group was shut down and will be restarted by the next job.")
                self.teardown(msg)
                raise WorkerDiedError(msg)

    def status(self) -> dict:
        return {
            "state": self.state if self.state not in ("starting", "ready") or self.usable() else "failed",
            "finishing_interrupted_job": self._pending is not None,
            "devices": list(self.spec.devices),
            "backend": self.spec.resolved_backend,
            "pids": self.pids(),
            "jobs_run": self.jobs_run,
            "last_error": self.last_error,
            "loaded_model": self.facts.get("base_token"),
            "last_job": self.last_job,
        }
