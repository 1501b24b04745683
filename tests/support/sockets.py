"""Listening TCP sockets of given processes, read from /proc (Linux)."""
from __future__ import annotations

import os


def _inodes(pid: int) -> set[str]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _decode(addr: str) -> str:
    host, port = addr.split(":")
    if len(host) == 8:
        ip = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0))
    else:
        ip = "ipv6:" + host
    return f"{ip}:{int(port, 16)}"


def listening_sockets(pids: list[int]) -> list[str]:
    """'ip:port' of every LISTEN socket owned by the given processes."""
    inodes = set().union(*(_inodes(p) for p in pids)) if pids else set()
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                found.append(_decode(cols[1]))
    return found


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
