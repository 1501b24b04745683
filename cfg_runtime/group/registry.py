"""The one worker group of this ComfyUI process: found, started, restarted or shut down here."""
from __future__ import annotations

import atexit
import logging
import threading
from typing import Callable

from .protocol import Phase

from ..errors import GroupStartError
from .handle import WorkerGroup
from .host import check_host_memory, sweep_stale_stores
from .spec import GroupSpec

log = logging.getLogger("cfg_parallel")

_current: WorkerGroup | None = None
_current_lock = threading.Lock()


def get_group(spec: GroupSpec, interrupt_requested: Callable[[], bool] | None = None,
              on_phase: Callable[[Phase], None] | None = None) -> WorkerGroup:
    """The running group for `spec`, starting (or restarting) it when needed, and done with any
    interrupted job. An interrupt while waiting raises JobInterrupted and keeps the group (still
    starting, or finishing that job) for the next prompt. on_phase gets the start-up phases (the
    group's SPAWNING and READY, each rank's STARTED, TORCH, JOINED, READY) and, while an
    interrupted job is finished first, that job's phases; an exception it raises leaves the group
    as an interrupt does."""
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
                group.spawn(on_phase)
                _current = group
            group.await_ready(interrupt_requested, on_phase)
            group.settle(interrupt_requested, on_phase)
            leak = group.fd_leak() if group.alive() else ""
            if leak:
                log.warning("cfg-parallel: %s; restarting the group before it runs out of fds", leak)
                group.teardown(leak)
                continue
            if group.alive():
                return group
        raise GroupStartError(f"The worker group failed again right after a restart: {group.last_error}")


def prestart(spec: GroupSpec, on_phase: Callable[[Phase], None] | None = None, replace: bool = True) -> bool:
    """Spawn the group for `spec` now when none runs for it, and return at once (get_group waits
    for it): the ranks start while ComfyUI does other work. True when a fresh group was spawned
    (its ranks hold no model yet). replace=False leaves a running group of other processes alone
    (and spawns nothing)."""
    global _current
    with _current_lock:
        group = _current
        if group is not None and group.usable() and (not replace or _same_processes(group.spec, spec)):
            return False
        check_host_memory(spec, tuple(group.pids()) if group is not None else ())  # before any teardown
        if group is not None:
            group.teardown()
        group = WorkerGroup(spec)
        group.spawn(on_phase)
        _current = group
        return True


def _same_processes(a: GroupSpec, b: GroupSpec) -> bool:
    """Whether two specs describe the same worker processes (deadlines aside): the same devices,
    backend, threads, set-up (the ComfyUI launch options they run with) and log level."""
    def identity(s: GroupSpec) -> tuple:
        return s.devices, s.resolved_backend, s.threads_per_rank, s.worker_init, s.worker_init_data, s.log_level

    return identity(a) == identity(b)


def current_group() -> WorkerGroup | None:
    return _current


def shutdown_group() -> None:
    global _current
    with _current_lock:
        if _current is not None:
            _current.teardown()
            _current = None


def _at_exit() -> None:
    shutdown_group()
    sweep_stale_stores()  # what other ComfyUI processes, killed, left (never a live process's files)


atexit.register(_at_exit)  # the registry's group lives until exit; a group made elsewhere has a finalizer
