"""Worker process entry point: join the process group, then run jobs until told to stop.

Started by WorkerGroup through multiprocessing 'spawn' with a neutral __main__, so a
worker never executes ComfyUI's main.py. It exits when its parent dies (death pipe).
"""
from __future__ import annotations

import os
import pickle
import shutil
import sys
import threading
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

import torch

from ..errors import JobInterrupted
from ..parallel.exchange import CollectiveExchange, Exchange
from .rank_os import KEEP_LISTENER_ENV, close_gloo_listener, raise_fd_limit, use_pid_named_mp_tempdir

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
    init: str = ""  # "module:function(device)" run before the process group forms


@dataclass
class RankContext:
    """What a job sees on a rank."""

    rank: int
    world_size: int
    device: torch.device
    exchange: Exchange
    cache: dict
    emit: Callable[[Any], None]
    stop_requested: Callable[[], bool]
    summary: dict = field(default_factory=dict)


def _watch_parent(death_conn, store_dir: str) -> None:
    """Exit at once when the parent dies: its end of the death pipe closes, or (should a
    forked grandchild keep that end open) this process gets a new parent. The
    rendezvous folder is removed on the way out: a killed parent cannot do it."""
    parent = os.getppid()

    def run() -> None:
        try:
            while os.getppid() == parent:
                if death_conn.poll(1.0):
                    death_conn.recv()  # EOF when the parent is gone; nothing else is ever sent
        except (EOFError, OSError):
            pass
        for path in [store_dir] + _mp_dir:
            shutil.rmtree(path, ignore_errors=True)
        os._exit(3)

    threading.Thread(target=run, name="cfgp-parent-watch", daemon=True).start()



def _failure(exc: BaseException, rank: int) -> dict:
    from ..parallel.dispatch import PeerFailed

    return {
        "rank": rank,
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-6000:],
        "peer": isinstance(exc, PeerFailed),
    }


def worker_main(config: WorkerConfig, conn, death_conn, stop_event) -> None:
    """Process entry: init, handshake, job loop."""
    import torch.multiprocessing  # noqa: F401  (registers tensor sharing for pipes)

    _watch_parent(death_conn, os.path.dirname(config.store_path))
    path = use_pid_named_mp_tempdir()  # not in the parent's folder, where a killed rank's socket stayed
    if path is not None:
        _mp_dir.append(path)
    raise_fd_limit()
    for key, value in config.env:
        os.environ[key] = value
    try:
        import torch.distributed as dist

        device = torch.device(config.device)
        if config.init:
            import importlib

            module, _, func = config.init.partition(":")
            getattr(importlib.import_module(module), func)(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
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
        exchange = CollectiveExchange(config.rank, config.world_size)
    except BaseException as exc:  # report, then exit: the parent turns this into a clear error
        conn.send(("start_error", _failure(exc, config.rank)))
        sys.exit(1)

    conn.send(("ready", {"rank": config.rank, "pid": os.getpid(), "device": str(device),
                         "backend": config.backend, "torch": torch.__version__,
                         "gloo_listener_closed": listener_closed}))
    cache: dict = {}

    def emit(payload: Any) -> None:
        if config.rank == 0:
            conn.send(("progress", payload))

    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break
        if message[0] == "shutdown":
            break
        if message[0] != "job":
            continue
        _, job_id, blob = message
        try:
            job = pickle.loads(blob)
        except Exception as exc:  # a job that cannot be rebuilt here
            conn.send(("job_error", {"job": job_id, **_failure(exc, config.rank)}))
            continue
        ctx = RankContext(config.rank, config.world_size, device, exchange, cache, emit,
                          stop_requested=stop_event.is_set)
        try:
            with torch.inference_mode():  # as ComfyUI runs its nodes (some samplers rely on it)
                value = job.run(ctx)
            if config.rank == 0:
                conn.send(("result", {"job": job_id, "value": value, "summary": ctx.summary}))
            else:
                conn.send(("done", {"job": job_id, "summary": ctx.summary}))
        except JobInterrupted as exc:
            conn.send(("interrupted", {"job": job_id, "step": exc.step, "summary": ctx.summary}))
        except BaseException as exc:
            conn.send(("job_error", {"job": job_id, **_failure(exc, config.rank)}))
        finally:
            job = blob = None  # drop references to shared tensors before the next job
    try:
        dist.destroy_process_group()
    except Exception:
        pass

