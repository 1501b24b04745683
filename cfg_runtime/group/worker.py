"""Worker process entry point: join the process group, then run jobs until told to stop.

Started by WorkerGroup through multiprocessing 'spawn' with a neutral __main__, so a
worker never executes ComfyUI's main.py. It exits when its parent dies (death pipe).
The messages it sends and reads are in ``protocol``; this module imports torch only once
it has reported that its process runs (Phase STARTED), so start-up is visible from the
first second.
"""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable

from ..errors import JobInterrupted
from . import preload, warm_start
from .protocol import (Done, Failure, Interrupted, Job, JobFailed, Phase, Progress, Ready, Result, Shutdown, Stage,
                       StartFailed)
from .rank_io import Outbox, forward_logs
from .rank_os import (KEEP_LISTENER_ENV, close_gloo_listener, open_files_note, raise_fd_limit,
                      use_pid_named_mp_tempdir, use_pid_named_semaphores)

if TYPE_CHECKING:
    import torch

    from ..parallel.exchange import Exchange

__all__ = ["KEEP_LISTENER_ENV", "RankContext", "WorkerConfig", "worker_main"]

_mp_dir: list[str] = []  # this rank's multiprocessing folder, removed when the parent dies


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a rank needs to join its group."""

    rank: int
    world_size: int
    device: str
    backend: str
    store_path: str
    collective_timeout_s: float
    threads: int
    env: tuple[tuple[str, str], ...] = ()
    init: str = ""  # "module:function(device, init_data) -> dict" run before the process group forms
    init_data: bytes = b""  # opaque to the group (GroupSpec.worker_init_data)
    log_level: int = 20  # the parent's console level (logging.INFO by default): records from it travel
    spawned_at: float = 0.0  # the parent's time.time() at spawn (same host): start-up phases count from it
    parent_poll_s: float = 1.0  # how often the rank checks that its parent lives
    warm: bool = False  # forked by the warm fork server (group.warm_start): env is the parent's whole environment


def _no_phase(text: str, done: int | float | None, total: int | float | None) -> None:
    return None


@dataclass
class RankContext:
    """What a job sees on a rank."""

    rank: int
    world_size: int
    device: "torch.device"
    exchange: "Exchange"
    cache: dict
    emit: Callable[[Any], None]  # progress payload -> the caller's on_progress (sent from rank 0 only)
    stop_requested: Callable[[], bool]
    summary: dict = field(default_factory=dict)
    send_phase: Callable[[str, int | float | None, int | float | None], None] = _no_phase

    def phase(self, text: str, done: int | float | None = None, total: int | float | None = None) -> None:
        """Tell the caller what this rank is doing now (e.g. "loading the model on rank 1 (4.2 GB)"):
        a Phase(rank, Stage.JOB, text, done, total) reaches the on_phase of the run, from any rank."""
        self.send_phase(text, done, total)


# --- start-up ---------------------------------------------------------------------------
def _watch_parent(death_conn, store_dir: str, poll_s: float) -> None:
    """Exit at once when the parent dies: its end of the death pipe closes, or (should a
    forked grandchild keep that end open) this process gets a new parent. The
    rendezvous folder is removed on the way out: a killed parent cannot do it."""
    parent = os.getppid()

    def run() -> None:
        try:
            while os.getppid() == parent:
                if death_conn.poll(poll_s):
                    death_conn.recv()  # EOF when the parent is gone; nothing else is ever sent
        except (EOFError, OSError):
            pass
        for path in [store_dir] + _mp_dir:
            shutil.rmtree(path, ignore_errors=True)
        os._exit(3)

    threading.Thread(target=run, name="cfgp-parent-watch", daemon=True).start()


def _prepare_process(config: WorkerConfig, death_conn, outbox: Outbox) -> None:
    """What the process needs before anything can fail: die with the parent, own temp folder,
    fd limit, environment, and its log records on their way to the parent."""
    _watch_parent(death_conn, os.path.dirname(config.store_path), config.parent_poll_s)
    path = use_pid_named_mp_tempdir()  # not in the parent's folder, where a killed rank's socket stayed
    if path is not None:
        _mp_dir.append(path)
    use_pid_named_semaphores()
    raise_fd_limit()
    if config.warm:  # the fork server's environment is ComfyUI's at its start: take the parent's of now
        os.environ.clear()
    for key, value in config.env:
        os.environ[key] = value
    forward_logs(outbox, config.log_level)
    outbox.startup_phase(Stage.STARTED, f"rank {config.rank} process started (pid {os.getpid()})")


def _run_init(config: WorkerConfig) -> dict:
    """The init hook's report (e.g. the rank's effective configuration), {} without a hook."""
    if not config.init:
        return {}
    import importlib

    module, _, func = config.init.partition(":")
    report = getattr(importlib.import_module(module), func)(config.device, config.init_data)
    return dict(report) if isinstance(report, dict) else {}


def _join_group(config: WorkerConfig, outbox: Outbox,
                marks: dict[str, float]) -> tuple["torch.device", "Exchange", bool, dict]:
    """Import torch, run the init hook, join the process group; (device, exchange, gloo port closed,
    the init hook's report). `marks` gets the seconds each step took."""
    t0 = time.time()
    import torch
    import torch.distributed as dist
    import torch.multiprocessing  # noqa: F401  (registers tensor sharing for pipes)

    from ..parallel.exchange import CollectiveExchange

    outbox.startup_phase(Stage.TORCH, f"rank {config.rank} imported torch {torch.__version__}")
    t1 = time.time()
    marks["torch"] = t1 - t0
    device = torch.device(config.device)
    try:
        setup = _run_init(config)
        if device.type == "cuda":
            torch.cuda.set_device(device)
    except Exception as exc:
        if config.warm and device.type == "cuda":  # e.g. a module imported by the fork server initialised CUDA
            raise RuntimeError(f"{exc} (this rank was forked by the warm fork server; if CUDA cannot start in it, "
                               f"start ComfyUI with {warm_start.ENV}=0)") from exc
        raise
    t2 = time.time()
    marks["set-up"] = t2 - t1
    if device.type != "cuda":
        torch.set_num_threads(max(1, config.threads))
    store = dist.FileStore(config.store_path, config.world_size)
    dist.init_process_group(config.backend, store=store, rank=config.rank, world_size=config.world_size,
                            timeout=timedelta(seconds=config.collective_timeout_s),
                            **({"device_id": device} if device.type == "cuda" else {}))
    dist.barrier()
    listener_closed = False
    if config.backend == "gloo" and os.environ.get(KEEP_LISTENER_ENV) != "1":
        listener_closed = close_gloo_listener()
        dist.barrier()  # the pairs still work without the port
    marks["group"] = time.time() - t2
    outbox.startup_phase(Stage.JOINED, f"rank {config.rank} joined the process group ({config.backend}, "
                                       f"{config.world_size} ranks)")
    return device, CollectiveExchange(config.rank, config.world_size), listener_closed, setup


def _report_ready(config: WorkerConfig, outbox: Outbox, device, listener_closed: bool, setup: dict,
                  marks: dict[str, float], torch_preloaded: bool) -> None:
    import torch

    seconds = round(time.time() - config.spawned_at, 3)
    steps = ", ".join(f"{name} {value:.1f} s" for name, value in marks.items())
    if config.warm:
        steps = f"forked warm{' with torch imported' if torch_preloaded else ''}; {steps}"
    outbox.startup_phase(Stage.READY, f"rank {config.rank} ready on {device} in {seconds:.1f} s ({steps})")
    outbox.send(Ready(config.rank, os.getpid(), str(device), config.backend, torch.__version__, listener_closed,
                      seconds, setup))


# --- jobs -------------------------------------------------------------------------------
@dataclass
class _Rank:
    """This rank once joined: what every job gets."""

    config: WorkerConfig
    outbox: Outbox
    device: Any
    exchange: Any
    stop_event: Any
    cache: dict = field(default_factory=dict)

    def context(self, job_id: int) -> RankContext:
        rank, outbox, started = self.config.rank, self.outbox, time.monotonic()

        def emit(payload: Any) -> None:
            if rank == 0:
                outbox.send(Progress(job_id, payload))

        def send_phase(text: str, done, total) -> None:
            outbox.send(Phase(rank, Stage.JOB, str(text), done, total, job_id, round(time.monotonic() - started, 3)))

        return RankContext(rank, self.config.world_size, self.device, self.exchange, self.cache, emit,
                           stop_requested=self.stop_event.is_set, send_phase=send_phase)

    def run(self, message: Job) -> None:
        """Run one job and send its outcome (Result, Done, Interrupted or JobFailed)."""
        import torch

        rank = self.config.rank
        first = not self.cache.get("jobs_unpacked")
        self.outbox.send(Phase(rank, Stage.JOB, "unpacking the job" + (" (the first one also imports its libraries)"
                                                                       if first else ""), job_id=message.job_id))
        try:
            t0 = time.monotonic()
            if first:
                preload.wait()  # never import beside the rank's background imports
            waited = time.monotonic() - t0
            job = pickle.loads(message.blob)
            if first:
                self.outbox.send(Phase(rank, Stage.JOB, f"first job unpacked in {time.monotonic() - t0:.1f} s "
                                                        f"({waited:.1f} s of it waiting for the rank's background "
                                                        f"imports)", job_id=message.job_id))
            self.cache["jobs_unpacked"] = True
        except Exception as exc:  # a job that cannot be rebuilt here
            failure = Failure.of(exc, rank, unpacking=True)
            if failure.out_of_files:  # say which limit (the parent words the message)
                failure = replace(failure, message=f"{failure.message.strip()}; {open_files_note()}")
            self.outbox.send(JobFailed(message.job_id, failure))
            return
        ctx = self.context(message.job_id)
        try:
            with torch.inference_mode():  # as ComfyUI runs its nodes (some samplers rely on it)
                value = job.run(ctx)
            done = Result(message.job_id, rank, value, ctx.summary) if rank == 0 else \
                Done(message.job_id, rank, ctx.summary)
            self.outbox.send(done)
        except JobInterrupted as exc:
            self.outbox.send(Interrupted(message.job_id, rank, exc.step, ctx.summary))
        except BaseException as exc:
            self.outbox.send(JobFailed(message.job_id, Failure.of(exc, rank)))

    def serve(self, conn) -> None:
        """Run jobs until Shutdown or the parent's end of the pipe closes."""
        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return
            if isinstance(message, Shutdown):
                return
            if isinstance(message, Job):
                self.run(message)
            message = None  # drop references to shared tensors before the next job


def worker_main(config: WorkerConfig, conn, death_conn, stop_event) -> None:
    """Process entry: prepare, join the group, report ready, serve jobs, leave."""
    outbox = Outbox(conn, config.rank, config.spawned_at)
    _prepare_process(config, death_conn, outbox)
    preloaded = "torch" in sys.modules  # imported before this process existed: by the warm fork server
    marks = {"process": time.time() - config.spawned_at}  # from the parent's spawn to this line
    try:
        device, exchange, listener_closed, setup = _join_group(config, outbox, marks)
    except BaseException as exc:  # report, then exit: the parent turns this into a clear error
        outbox.send(StartFailed(Failure.of(exc, config.rank)))
        sys.exit(1)
    _report_ready(config, outbox, device, listener_closed, setup, marks, preloaded)
    _Rank(config, outbox, device, exchange, stop_event).serve(conn)
    try:
        import torch.distributed as dist

        dist.destroy_process_group()
    except Exception:
        pass
