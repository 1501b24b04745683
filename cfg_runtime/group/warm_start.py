"""A warm start for the ranks: one fork server, started with ComfyUI, that has imported the ranks'
heavy modules (torch and what ComfyUI's model code pulls in), so a group start forks processes that
have them already instead of starting Python and importing them afresh for every rank.

It is multiprocessing's 'forkserver' start method with preloaded modules. The server holds no GPU:
CUDA cannot cross a fork, so each rank still sets up its own device after it is forked, and what the
server imports must not initialise CUDA (importing torch maps the driver library without starting
it: a rank forked after that runs CUDA, checked on an H100; a rank whose CUDA fails to start says how
to turn the warm start off). The server exits with the process that started it. Where the platform
has no fork server, groups spawn as before.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
from contextlib import contextmanager

from .host import neutral_main
from .rank_os import use_pid_named_mp_tempdir

ENV = "CFG_PARALLEL_WARM_START"  # "1" / "0": the warm start on / off (the default is the caller's)

_lock = threading.Lock()
_ctx = None  # the forkserver context, once its server was started here


def start(modules: tuple[str, ...]) -> bool:
    """Start the fork server with `modules` imported in it, without waiting for the imports; True if
    it runs (or was started before). A module that fails to import is skipped by the server."""
    global _ctx
    with _lock:
        if _ctx is not None:
            return True
        if "forkserver" not in mp.get_all_start_methods():
            return False
        import multiprocessing.forkserver as forkserver

        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(modules))
        use_pid_named_mp_tempdir(keep_existing=True)  # its socket: in a folder swept after a killed ComfyUI
        with neutral_main(), _path_in_environment():  # not ComfyUI's main.py, nor <ComfyUI>/comfy on its path
            forkserver.ensure_running()
        _ctx = ctx
        return True


@contextmanager
def _path_in_environment():
    """This process's sys.path as PYTHONPATH while the server starts: Python 3.11's fork server ignores
    the path it is given, so without it the preloaded modules that live beside ComfyUI are not found."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def context():
    """The multiprocessing context ranks start with: the warm fork server's once started, else None."""
    return _ctx


def server_pid() -> int | None:
    """The fork server's pid (None when none was started here)."""
    if _ctx is None:
        return None
    import multiprocessing.forkserver as forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)
