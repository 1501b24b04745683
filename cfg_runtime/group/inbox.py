"""The parent's reading of the ranks' pipes: one bounded wait, rank logs re-logged on the way."""
from __future__ import annotations

import logging
from multiprocessing.connection import wait as wait_any
from typing import Any

from .monitor import DeathWatch
from .protocol import Log, Phase, Stage
from .rank_io import relog
from .ranks import RankProcess

log = logging.getLogger("cfg_parallel")

EOF = object()  # what a closed pipe reads as


def poll(watch: DeathWatch, timeout: float, ranks: list[RankProcess]) -> tuple[list[tuple[RankProcess, Any]], bool]:
    """Wait up to `timeout` for messages from `ranks`. Log messages are re-logged here with the
    rank named and phases logged; every message but Log comes back in order (a closed pipe as
    EOF), with whether a rank has died. A dead rank's last messages (its error, probably) are
    all read before its death counts."""
    by_conn = {id(r.conn): r for r in ranks}
    ready = wait_any([r.conn for r in ranks] + [watch], timeout=timeout)
    messages = [(by_conn[id(obj)], _read(by_conn[id(obj)])) for obj in ready if id(obj) in by_conn]
    died = watch in ready
    if died:
        for r in ranks:
            while r.process in watch.dead and _readable(r):
                messages.append((r, _read(r)))
                if messages[-1][1] is EOF:
                    break
    out = []
    for rank, message in messages:
        if isinstance(message, Log):
            relog(message, log)
            continue
        if isinstance(message, Phase):
            log_phase(message)
        out.append((rank, message))
    return out, died


def log_phase(phase: Phase) -> None:
    """A rank's phase in the console: its ready line and a job's phases at INFO, the rest at DEBUG."""
    if phase.stage is Stage.JOB:
        log.info("[rank %d] %s", phase.rank, phase.text)
    else:
        log.log(logging.INFO if phase.stage is Stage.READY else logging.DEBUG, "cfg-parallel: %s", phase.text)


def _readable(rank: RankProcess) -> bool:
    try:
        return rank.conn.poll(0)
    except (OSError, EOFError):
        return False


def _read(rank: RankProcess) -> Any:
    try:
        return rank.conn.recv()
    except (EOFError, OSError):
        return EOF
