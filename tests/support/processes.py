"""Processes of a ComfyUI server and its worker group, read from /proc (Linux): descendants,
the ranks, their memory, fds and threads; waiting for them to die; slowing them down."""
from __future__ import annotations

import os
import signal
import threading
import time

from support.sockets import fd_targets, pid_alive


def _ppid_map() -> dict[int, int]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    out[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(pid: int) -> list[int]:
    parents = _ppid_map()
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return sorted(c for c in found if pid_alive(c))


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(server_pid: int) -> list[int]:
    """The rank processes: spawned children of the ComfyUI process (not the resource tracker), or
    the children of its warm fork server (group.warm_start), which carry the server's command line."""
    parents = _ppid_map()
    return [p for p in descendants(server_pid) if "spawn_main" in cmdline(p)
            or ("forkserver" in cmdline(p) and parents.get(p) != server_pid)]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pending_fd_dups(pid: int) -> int:
    """Extra fds on a shared-memory segment the process already holds open.

    A tensor sent to a rank travels as a duplicated fd that multiprocessing's resource sharer
    keeps until the receiving process fetches it. At rest (no job in flight) every such dup has
    been fetched; one still open belongs to a message that no process will ever read."""
    seen: dict[str, int] = {}
    for target in fd_targets(pid):
        if target.startswith("/dev/shm/"):
            seen[target] = seen.get(target, 0) + 1
    return sum(n - 1 for n in seen.values())


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(server_pid: int) -> dict:
    procs = [server_pid] + descendants(server_pid)
    per = {}
    for p in procs:
        try:
            per[p] = {"rss_mib": round(rss_mib(p), 1), "fds": fd_count(p), "threads": thread_count(p)}
        except OSError:
            pass
    return {"processes": len(per), "rss_mib_total": round(sum(v["rss_mib"] for v in per.values()), 1),
            "fds_total": sum(v["fds"] for v in per.values()), "per_pid": per}


def wait_dead(pids, timeout: float) -> tuple[list[int], float]:
    t0 = time.monotonic()
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() - t0 > timeout:
            return alive, time.monotonic() - t0
        time.sleep(0.05)


class Throttle:
    """Runs the given processes at ~1/10 of their speed (SIGSTOP/SIGCONT cycles): a slow host."""

    def __init__(self, pids, run_s: float = 0.05, stop_s: float = 0.45):
        self.pids, self.run_s, self.stop_s = list(pids), run_s, stop_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _signal(self, sig):
        for p in self.pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def _loop(self):
        while not self._done.is_set():
            self._signal(signal.SIGSTOP)
            self._done.wait(self.stop_s)
            self._signal(signal.SIGCONT)
            self._done.wait(self.run_s)
        self._signal(signal.SIGCONT)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join(10)
        self._signal(signal.SIGCONT)
