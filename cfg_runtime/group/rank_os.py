"""Operating-system chores of a worker process and its parent: fd limits, the multiprocessing
temp folder named by pid, and closing gloo's listening port once the mesh is connected."""
from __future__ import annotations

import os
import shutil

MP_PREFIX = "cfgp-mp-"  # a multiprocessing folder named by its owner pid, for the start-up sweep (host.py)
SEM_PREFIX = "mp-cfgp"  # + "<pid>-<random>": a named semaphore (/dev/shm/sem.<name>) of this process, by pid


def use_pid_named_semaphores() -> None:
    """Name the multiprocessing semaphores this process creates from now on by its pid (/dev/shm/sem.mp-cfgp<pid>-*).
    multiprocessing removes them when they are freed, or its resource tracker does when the process ends; a fault
    that kills the tracker too (SIGKILL to the process group) leaves them, and the sweep (host.py) removes those
    whose owner is gone."""
    import multiprocessing.process

    try:
        multiprocessing.process.current_process()._config["semprefix"] = f"/{SEM_PREFIX}{os.getpid()}"
    except AttributeError:  # pragma: no cover - another multiprocessing
        pass


def use_pid_named_mp_tempdir(keep_existing: bool = False) -> str | None:
    """Give this process's multiprocessing (its resource sharer's `listener-*` sockets) a folder
    named by this pid, removed on a clean exit; after a kill, the next group start sweeps it
    (owner gone). keep_existing: leave a folder multiprocessing already uses. Returns the new
    folder, or None when none was made."""
    import multiprocessing.process
    import multiprocessing.util
    import tempfile

    try:
        config = multiprocessing.process.current_process()._config
    except AttributeError:  # pragma: no cover - another multiprocessing
        return None
    if keep_existing and config.get("tempdir") is not None:
        return None
    try:
        path = tempfile.mkdtemp(prefix=f"{MP_PREFIX}{os.getpid()}-")
    except OSError:
        return None
    if len(path) > 88:  # AF_UNIX paths hold 107 bytes: keep multiprocessing's default folder
        os.rmdir(path)
        return None
    config["tempdir"] = path
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(path, True), exitpriority=-100)
    return path


KEEP_LISTENER_ENV = "CFG_PARALLEL_KEEP_GLOO_LISTENER"  # "1": leave gloo's port open (to measure the leak)
_listener_plug: list[int] = []  # the write end that keeps the plug quiet, for the life of the process


def _tcp_listen_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if len(cols) > 9 and cols[3] == "0A":
                        inodes.add(cols[9])
        except OSError:
            pass
    return inodes


def close_gloo_listener() -> bool:
    """Close gloo's listening port once the full mesh is connected (after the first barrier).

    gloo accepts on that port for the life of the process group and keeps every accepted socket
    that sends no handshake, so any local process could leak this rank's fds until it aborts.
    The pairs are connected by now and nothing listens again (no new groups are made), so the
    listening socket is swapped for a quiet pipe on the same fd number: the port is gone, and
    gloo's event loop, which unregisters that fd when the group is destroyed, finds it registered
    (the pipe is added to the process's epoll sets with no events). Returns whether it closed.
    """
    import select

    inodes = _tcp_listen_inodes()
    listeners, epolls = [], []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            listeners.append(int(name))
        elif target == "anon_inode:[eventpoll]":
            epolls.append(int(name))
    if len(listeners) != 1 or not epolls:
        return False
    fd = listeners[0]
    read_end, write_end = os.pipe()
    os.dup2(read_end, fd)  # the listening socket's last reference: the port closes
    os.close(read_end)
    _listener_plug.append(write_end)
    for epfd in epolls:
        ep = select.epoll.fromfd(os.dup(epfd))
        try:
            ep.register(fd, 0)
        except OSError:
            pass
        finally:
            ep.close()
    return True


def raise_fd_limit() -> None:
    """Lift the soft limit of open files to the hard one (each shared tensor in flight holds fds)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def open_files_note() -> str:
    """'limit 64, hard limit 64, 63 files open' for this process, as far as it can tell (at the limit,
    even counting them needs a file)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return "open-file limit unknown"
    try:
        now = f", {len(os.listdir('/proc/self/fd'))} files open"
    except OSError:
        now = ""
    return f"limit {soft}, hard limit {hard}{now}"
