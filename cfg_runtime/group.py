"""The persistent worker group, seen from the ComfyUI process.

The parent is not a member of the process group: it talks to each rank over a pipe
and never enters a collective, so a dead or hung rank can't freeze it. Every wait has
a deadline; process sentinels are watched; after any fault the group is torn down and
the next job starts a fresh one.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import math
import multiprocessing as mp
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable

from .errors import (CFGParallelError, GroupConfigError, GroupStartError, JobFailedError, JobInterrupted, JobTimeoutError,
                     ShippingError, WorkerDiedError, clip)
from .shipping import dumps
from .worker import MP_PREFIX, WorkerConfig, raise_fd_limit, use_pid_named_mp_tempdir, worker_main

log = logging.getLogger("cfg_parallel")

LOOPBACK_ENV = (("GLOO_SOCKET_IFNAME", "lo"), ("NCCL_SOCKET_IFNAME", "lo"), ("NCCL_NVLS_ENABLE", "0"),
                ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"))


@dataclass(frozen=True)
class GroupSpec:
    """Which devices, which backend, and the deadlines."""

    devices: tuple[str, ...]
    backend: str = ""  # "" = nccl for CUDA devices, gloo for CPU
    threads_per_rank: int = 1
    start_timeout_s: float = 180.0
    step_timeout_s: float = 600.0
    load_timeout_s: float = 900.0  # until the first step of a job: model shipping and loading
    collective_timeout_s: float = 600.0
    interrupt_grace_s: float = 60.0  # for ranks to stop, after an interrupt mid-sampling, before a teardown
    # After an interrupt, return to ComfyUI after this long and let the ranks finish in the background:
    detach_after_s: float = 0.25  # before the first step (start-up, model load: the ranks stop only later)
    detach_mid_sampling_s: float = 1.0  # mid-sampling (the ranks normally stop within the step in flight)
    worker_init: str = ""  # "module:function" called with the device name before the first job
    fd_margin: int = 1024  # open fds a rank may gain after its first job before the group is respawned
    host_mib_per_rank: float = 800.0  # host memory a rank needs before any model: torch + ComfyUI (~790 MiB RSS)

    @property
    def world_size(self) -> int:
        return len(self.devices)

    @property
    def resolved_backend(self) -> str:
        if self.backend:
            return self.backend
        return "nccl" if all(d.startswith("cuda") for d in self.devices) else "gloo"


_CUDA_NAME = re.compile(r"cuda:[0-9]{1,4}")
BACKEND_ENV = "CFG_PARALLEL_BACKEND"  # "gloo" lets two ranks share one GPU (tests, benchmarks)


def parse_devices(text: str, size: int, backend: str = "") -> tuple[str, ...]:
    """'cuda:0,cuda:1' / 'cpu' / '' (auto) + size -> validated device tuple."""
    import torch

    if not isinstance(size, int) or size < 1:
        raise GroupConfigError(f"Parallel size must be a whole number of at least 1, got {size!r}.")
    if not isinstance(text, str):
        raise GroupConfigError(f"devices must be text such as 'cuda:0,cuda:1' or 'cpu', got {clip(text)}.")
    names = [d.strip().lower() for d in text.replace(";", ",").split(",") if d.strip()] if text else []
    if not names or names == ["auto"]:
        n_gpu = torch.cuda.device_count()
        if n_gpu >= size:
            names = [f"cuda:{i}" for i in range(size)]
        elif n_gpu == 0:
            cores = os.cpu_count() or 1
            if size > cores:
                raise GroupConfigError(
                    f"Parallel size {size} would start {size} CPU ranks on a machine with no GPU and {cores} cores "
                    f"(each rank loads torch and the model). Use at most {cores}, or write devices 'cpu' to insist.")
            names = ["cpu"] * size
        else:
            raise GroupConfigError(
                f"Parallel size {size} asks for {size} GPUs but this machine has {n_gpu}. Lower the parallel size "
                f"to {n_gpu} or less, or list devices explicitly (e.g. 'cpu' to run the ranks on the CPU).")
    elif names == ["cpu"]:
        names = ["cpu"] * size
    for name in names:
        if name == "cuda":
            raise GroupConfigError("Write CUDA devices with their index, e.g. 'cuda:0,cuda:1'.")
        if name != "cpu" and not _CUDA_NAME.fullmatch(name):
            raise GroupConfigError(f"Unknown device {clip(name, 40)}: write 'cpu' or 'cuda:N' with N in digits 0-9, "
                                   f"e.g. 'cuda:0,cuda:1'.")
    if len(names) != size:
        listed = clip(", ".join(names), 80) if len(names) <= 64 else f"{len(names)} names"
        raise GroupConfigError(f"{len(names)} device(s) listed ({listed}) but parallel size is {size}: "
                               f"list exactly one device per rank, or leave devices empty for automatic choice.")
    kinds = {n.split(":")[0] for n in names}
    if len(kinds) > 1:
        raise GroupConfigError(f"Mixed devices ({clip(', '.join(names), 80)}): all ranks must be CPUs or all GPUs.")
    check_device_backend(tuple(names), backend)
    n_gpu = torch.cuda.device_count() if "cuda" in kinds else 0
    for name in names:
        if name != "cpu" and int(name[5:]) >= n_gpu:
            raise GroupConfigError(f"Device '{name}' does not exist: this machine has {n_gpu} CUDA device(s).")
    return tuple(names)


def check_device_backend(devices: tuple[str, ...], backend: str) -> None:
    """Refuse a GPU listed twice unless the backend is gloo (NCCL refuses two ranks on one GPU)."""
    if backend not in ("", "gloo", "nccl"):
        raise GroupConfigError(f"Unknown backend {clip(backend, 20)}: use 'nccl' (GPUs) or 'gloo' (CPU, or several "
                               f"ranks on one GPU), or leave it empty for the default.")
    if backend == "nccl" and any(d == "cpu" for d in devices):
        raise GroupConfigError("The nccl backend runs on GPUs only; CPU ranks need gloo (leave the backend empty).")
    gpus = [d for d in devices if d != "cpu"]
    twice = sorted({d for d in gpus if gpus.count(d) > 1})
    if twice and backend != "gloo":
        raise GroupConfigError(
            f"{', '.join(twice)} is listed more than once: NCCL, the backend for GPU ranks, refuses two ranks on one "
            f"GPU. List each GPU once (e.g. 'cuda:0,cuda:1'), or lower the parallel size to the number of GPUs. "
            f"To run two ranks on one GPU anyway (tests, benchmarks; slower), use the gloo backend: start ComfyUI "
            f"with the environment variable {BACKEND_ENV}=gloo, or pass GroupSpec(backend='gloo').")


def available_host_mib() -> float | None:
    """Host memory this process may still use (MemAvailable, capped by a cgroup v2 limit); None if unknown."""
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.split("::", 1)[1].strip() for ln in f if ln.startswith("0::")), None)
        if rel is not None:
            base = os.path.join("/sys/fs/cgroup", rel.lstrip("/"))
            with open(os.path.join(base, "memory.max")) as f:
                limit = f.read().strip()
            if limit != "max":
                with open(os.path.join(base, "memory.current")) as f:
                    free = (int(limit) - int(f.read())) / 2**20
                found = free if found is None else min(found, free)
    except (OSError, ValueError, StopIteration):
        pass
    return found


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:")), 0.0)
    except (OSError, ValueError):
        return 0.0


def check_host_memory(spec: "GroupSpec", freed_pids: tuple[int, ...] = ()) -> None:
    """Refuse a group whose ranks would not fit in the host memory available now (plus what the
    processes in `freed_pids`, a group about to be replaced, would give back)."""
    need = spec.world_size * spec.host_mib_per_rank
    have = available_host_mib()
    if have is None:
        return
    have += sum(_rss_mib(p) for p in freed_pids)
    if need <= have:
        return
    fit = int(have // spec.host_mib_per_rank)
    raise GroupConfigError(
        f"{spec.world_size} ranks need about {need / 1024:.1f} GiB of host memory before any model is loaded "
        f"(~{spec.host_mib_per_rank:.0f} MiB each for torch and ComfyUI), but only {have / 1024:.1f} GiB is "
        f"available. Lower the parallel size to {max(fit, 1)} or less (more ranks than branches leave the extra "
        f"ranks idle anyway), or free host memory.")


STORE_PREFIX = "cfgp-store-"


def _bound_unix_paths() -> set[str] | None:
    """Paths of the AF_UNIX sockets that some process has bound now (None if /proc can't tell)."""
    try:
        with open("/proc/net/unix") as f:
            return {cols[7] for cols in (ln.split() for ln in f.readlines()[1:]) if len(cols) >= 8}
    except OSError:
        return None


def _sweep_stale_stores() -> None:
    """Remove what processes killed without a clean-up left in the temp folder: the pack's
    rendezvous and multiprocessing folders whose owner pid is gone (e.g. SIGKILL to ComfyUI,
    SIGTERM to its whole process group), and stale `listener-*` sockets (bound by no process)
    in multiprocessing's own `pymp-*` folders, where ranks of older versions left them."""
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    bound = None
    for name in names:
        path = os.path.join(root, name)
        prefix = next((p for p in (STORE_PREFIX, MP_PREFIX) if name.startswith(p)), None)
        if prefix is not None:
            owner = name[len(prefix):].split("-", 1)[0]
            if not owner.isdigit():
                continue
            try:
                os.kill(int(owner), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        elif name.startswith("pymp-"):
            # A pymp folder may belong to a live process that reuses it later: keep the folder,
            # drop only sockets that nobody listens on (a connect there is refused anyway).
            bound = _bound_unix_paths() if bound is None else bound
            if bound is None:
                continue
            try:
                entries = os.listdir(path)
            except OSError:
                continue
            for entry in entries:
                sock = os.path.join(path, entry)
                if entry.startswith("listener-") and sock not in bound:
                    try:
                        if stat.S_ISSOCK(os.lstat(sock).st_mode) and os.lstat(sock).st_uid == os.getuid():
                            os.unlink(sock)
                    except OSError:
                        pass


def _is_out_of_memory(failure: dict) -> bool:
    """Whether a rank's failure is an allocation failure (CUDA OOM, or a host allocation refused)."""
    message = str(failure.get("message", "")).lower()
    return failure.get("type") in ("OutOfMemoryError", "MemoryError") or "out of memory" in message \
        or "can't allocate memory" in message


def _fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _make_store_dir() -> str:
    """The private rendezvous folder (0700), or a GroupStartError that says how to fix the temp folder."""
    root = tempfile.gettempdir()
    try:
        return tempfile.mkdtemp(prefix=f"{STORE_PREFIX}{os.getpid()}-", dir=root)
    except OSError as exc:
        raise GroupStartError(
            f"Cannot create the worker group's rendezvous folder in {clip(root, 120)}: {exc.strerror or exc}. "
            f"Free disk space there or make it writable (or start ComfyUI with TMPDIR pointing at a writable "
            f"folder), then queue the prompt again.") from None


def _release_uncollected_handles() -> None:
    """Close the shared-memory fds that a dead rank never collected from this process.

    Tensors sent through a pipe wait in multiprocessing's resource sharer until the
    receiver fetches them; a rank that died first leaves them open for good. Only
    this pack sends tensors to other processes here, and its group is gone.
    """
    try:
        from multiprocessing import resource_sharer

        resource_sharer.stop(timeout=2.0)
    except Exception as exc:  # best effort
        log.debug("cfg-parallel: could not release pending handles: %s", exc)


@contextmanager
def _neutral_main():
    """What a spawned child copies from this process, made safe while spawning.

    __main__ is hidden, so children never import ComfyUI's main.py; and package folders
    that ComfyUI puts on sys.path (nodes.py adds <ComfyUI>/comfy) are left out, since
    their modules (0.29 has comfy/logging.py) would shadow the standard library there.
    """
    saved_main = sys.modules.get("__main__")
    saved_path = list(sys.path)
    package_dirs = {os.path.realpath(d) for d in getattr(sys.modules.get("comfy"), "__path__", ())}
    sys.path[:] = [p for p in sys.path if not (p and os.path.realpath(p) in package_dirs)]
    sys.modules["__main__"] = types.ModuleType("__cfgp_neutral_main__")
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


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
        _sweep_stale_stores()
        self._store_dir = _make_store_dir()
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
            with _neutral_main():
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
            _release_uncollected_handles()
            _sweep_stale_stores()  # what the killed ranks left (their multiprocessing folders)
        self.state = "failed" if reason else "closed"

    def fd_leak(self) -> str:
        """Why a rank holds too many open fds ('' when none does). A local process can make a rank
        leak one fd per connection to its gloo port (accepted, never closed): the group is then
        respawned between jobs, long before the rank reaches its fd limit and aborts."""
        for r in self.ranks:
            base = self._fd_baseline.get(r.process.pid)
            now = _fd_count(r.process.pid)
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
            self._fd_baseline = {pid: n for pid, n in ((p, _fd_count(p)) for p in self.pids()) if n is not None}
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


# --- the process-wide group ---------------------------------------------------
_current: WorkerGroup | None = None
_current_lock = threading.Lock()


def get_group(spec: GroupSpec, interrupt_requested: Callable[[], bool] | None = None) -> WorkerGroup:
    """The running group for `spec`, starting (or restarting) it when needed, and done with any
    interrupted job. An interrupt while waiting raises JobInterrupted and keeps the group (still
    starting, or finishing that job) for the next prompt."""
    global _current
    with _current_lock:
        for _ in range(2):  # a fault found while settling an interrupted job: one fresh start
            group = _current
            if group is not None and group.usable() and _same_processes(group.spec, spec):
                group.spec = spec  # only deadlines differ: no restart, no reload
            if group is None or group.spec != spec:
                check_host_memory(spec, tuple(group.pids()) if group is not None else ())  # before any teardown
            if group is not None and (group.spec != spec or not group.usable()):
                if group.state == "ready" and not group.usable():
                    log.warning("cfg-parallel: a worker died while idle; restarting the group")
                group.teardown()
                _current = group = None
            if group is None:
                group = WorkerGroup(spec)
                group.spawn()
                _current = group
            group.await_ready(interrupt_requested)
            group.settle(interrupt_requested)
            leak = group.fd_leak() if group.alive() else ""
            if leak:
                log.warning("cfg-parallel: %s; restarting the group before it runs out of fds", leak)
                group.teardown(leak)
                continue
            if group.alive():
                return group
        raise GroupStartError(f"The worker group failed again right after a restart: {group.last_error}")


def _same_processes(a: GroupSpec, b: GroupSpec) -> bool:
    """Whether two specs describe the same worker processes (deadlines aside)."""
    return (a.devices, a.resolved_backend, a.threads_per_rank, a.worker_init) == \
        (b.devices, b.resolved_backend, b.threads_per_rank, b.worker_init)


def current_group() -> WorkerGroup | None:
    return _current


def shutdown_group() -> None:
    global _current
    with _current_lock:
        if _current is not None:
            _current.teardown()
            _current = None


atexit.register(shutdown_group)
