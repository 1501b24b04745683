"""What the parent needs from the host before and after a group: memory, fds, temp folders.

Every function here is best effort about the host and exact about what it refuses.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import sys
import tempfile
import types
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..errors import GroupConfigError, GroupStartError, clip
from .rank_os import MP_PREFIX, SEM_PREFIX

if TYPE_CHECKING:
    from .spec import GroupSpec

log = logging.getLogger("cfg_parallel")


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


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:")), 0.0)
    except (OSError, ValueError):
        return 0.0


HEADROOM = 0.25  # of the available host memory, left for the model, ComfyUI and the rest of the machine


def suggested_size(spec: "GroupSpec", have_mib: float) -> int:
    """The largest parallel size that fits `have_mib` with headroom and the host's devices:
    one CPU rank per core, one GPU rank per GPU listed (NCCL takes each GPU once)."""
    fit = int(have_mib * (1 - HEADROOM) // spec.host_mib_per_rank)
    if all(d == "cpu" for d in spec.devices):
        devices = os.cpu_count() or 1
    else:
        devices = len(set(spec.devices))
    return max(1, min(fit, devices, spec.world_size - 1))


def check_host_memory(spec: "GroupSpec", freed_pids: tuple[int, ...] = ()) -> None:
    """Refuse a group whose ranks would not fit in the host memory available now (plus what the
    processes in `freed_pids`, a group about to be replaced, would give back)."""
    need = spec.world_size * spec.host_mib_per_rank
    have = available_host_mib()
    if have is None:
        return
    have += sum(rss_mib(p) for p in freed_pids)
    if need <= have:
        return
    fit = suggested_size(spec, have)
    todo = "Run at parallel size 1 (in ComfyUI, no extra process)" if fit == 1 else \
        f"Lower the parallel size to {fit} or less (what fits with room for the model"  \
        f"{', one rank per core' if spec.devices[0] == 'cpu' else ', one rank per GPU'})"
    raise GroupConfigError(
        f"{spec.world_size} ranks need about {need / 1024:.1f} GiB of host memory before any model is loaded "
        f"(~{spec.host_mib_per_rank:.0f} MiB each for torch and ComfyUI), but only {have / 1024:.1f} GiB is "
        f"available. {todo}, or free host memory.")


STORE_PREFIX = "cfgp-store-"
SHM_DIR = "/dev/shm"


def bound_unix_paths() -> set[str] | None:
    """Paths of the AF_UNIX sockets that some process has bound now (None if /proc can't tell)."""
    try:
        with open("/proc/net/unix") as f:
            return {cols[7] for cols in (ln.split() for ln in f.readlines()[1:]) if len(cols) >= 8}
    except OSError:
        return None


def _owner_gone(owner: str) -> bool:
    """Whether the process `owner` (a pid in a name) has ended; False when unsure (pid reused, no permission)."""
    if not owner.isascii() or not owner.isdigit():
        return False
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    try:  # a zombie (ended, not reaped yet: e.g. a rank whose server was killed with it) has ended too
        with open(f"/proc/{owner}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def sweep_semaphores(shm: str = SHM_DIR) -> None:
    """Remove the named semaphores (/dev/shm/sem.mp-cfgp<pid>-*) of the pack's processes that have ended."""
    try:
        names = os.listdir(shm)
    except OSError:
        return
    head = f"sem.{SEM_PREFIX}"
    for name in names:
        if name.startswith(head) and _owner_gone(name[len(head):].split("-", 1)[0]):
            try:
                os.unlink(os.path.join(shm, name))
            except OSError:
                pass


def sweep_stale_stores() -> None:
    """Remove what processes killed without a clean-up left: the pack's rendezvous and multiprocessing
    folders in the temp folder and its named semaphores in /dev/shm whose owner pid is gone (e.g. SIGKILL
    to ComfyUI, SIGTERM to its whole process group), and stale `listener-*` sockets (bound by no process)
    in multiprocessing's own `pymp-*` folders, where ranks of older versions left them. Never what a live
    process owns."""
    sweep_semaphores()
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
            if _owner_gone(name[len(prefix):].split("-", 1)[0]):
                shutil.rmtree(path, ignore_errors=True)
        elif name.startswith("pymp-"):
            bound = bound_unix_paths() if bound is None else bound
            if bound is not None:
                _drop_unbound_listeners(path, bound)


def _drop_unbound_listeners(path: str, bound: set[str]) -> None:
    """A pymp folder may belong to a live process that reuses it later: keep the folder, drop only
    sockets that nobody listens on (a connect there is refused anyway)."""
    try:
        entries = os.listdir(path)
    except OSError:
        return
    for entry in entries:
        sock = os.path.join(path, entry)
        if entry.startswith("listener-") and sock not in bound:
            try:
                if stat.S_ISSOCK(os.lstat(sock).st_mode) and os.lstat(sock).st_uid == os.getuid():
                    os.unlink(sock)
            except OSError:
                pass


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def make_store_dir() -> str:
    """The private rendezvous folder (0700), or a GroupStartError that says how to fix the temp folder."""
    root = tempfile.gettempdir()
    try:
        return tempfile.mkdtemp(prefix=f"{STORE_PREFIX}{os.getpid()}-", dir=root)
    except OSError as exc:
        raise GroupStartError(
            f"Cannot create the worker group's rendezvous folder in {clip(root, 120)}: {exc.strerror or exc}. "
            f"Free disk space there or make it writable (or start ComfyUI with TMPDIR pointing at a writable "
            f"folder), then queue the prompt again.") from None


def release_uncollected_handles(timeout_s: float = 2.0) -> None:
    """Close the shared-memory fds that a dead rank never collected from this process.

    Tensors sent through a pipe wait in multiprocessing's resource sharer until the
    receiver fetches them; a rank that died first leaves them open for good. Only
    this pack sends tensors to other processes here, and its group is gone.
    """
    try:
        from multiprocessing import resource_sharer

        resource_sharer.stop(timeout=timeout_s)
    except Exception as exc:  # best effort
        log.debug("cfg-parallel: could not release pending handles: %s", exc)


@contextmanager
def neutral_main():
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
