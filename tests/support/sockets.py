"""Open files and TCP sockets of given processes, read from /proc (Linux)."""
from __future__ import annotations

import os


def fd_targets(pid: int) -> list[str]:
    """What each open file descriptor of a process points at (empty if the process is gone)."""
    targets = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return targets
    for fd in fds:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def _inodes(pid: int) -> set[str]:
    return {t[8:-1] for t in fd_targets(pid) if t.startswith("socket:[")}


def _decode(addr: str) -> str:
    host, port = addr.split(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        ip = "ipv6:" + host
    return f"{ip}:{int(port, 16)}"


def _tcp_entries(pids: list[int]) -> list[tuple[str, str, str]]:
    """(state, local, remote) of every TCP socket the given processes hold."""
    inodes = set().union(*(_inodes(p) for p in pids)) if pids else set()
    entries = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes:
                entries.append((cols[3], _decode(cols[1]), _decode(cols[2])))
    return entries


def listening_sockets(pids: list[int]) -> list[str]:
    """'ip:port' of every LISTEN socket owned by the given processes."""
    return [local for state, local, _ in _tcp_entries(pids) if state == "0A"]


def established_peers(pids: list[int]) -> list[str]:
    """Remote 'ip:port' of the TCP connections the given processes hold (any state but LISTEN)."""
    return [remote for state, _, remote in _tcp_entries(pids) if state != "0A"]


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr.startswith("ipv6:00000000000000000000000001000000")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
