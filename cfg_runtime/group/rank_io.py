"""A rank's side of its pipe: one locked sender for every thread, and its log records forwarded.

Plain Python (no torch): the rank sets this up before it imports torch, so that what the
import logs and warns reaches the ComfyUI console too.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .protocol import Log, Phase, Stage

LOGGER = "cfg_parallel"


class Outbox:
    """Sends messages to the parent; safe from any thread of the rank (the main loop, a job's
    threads, the log handler). A closed pipe drops the message: the parent is gone or tearing
    the group down, and the rank's own parent watch ends it. A message that cannot be pickled
    raises (a job's result: the job then fails with that error)."""

    def __init__(self, conn, rank: int, spawned_at: float) -> None:
        self.conn = conn
        self.rank = rank
        self.spawned_at = spawned_at  # time.time() in the parent when it spawned this rank
        self._lock = threading.RLock()

    def send(self, message: Any) -> bool:
        with self._lock:
            try:
                self.conn.send(message)
                return True
            except (OSError, EOFError):
                return False

    def startup_phase(self, stage: Stage, text: str) -> None:
        self.send(Phase(self.rank, stage, text, elapsed_s=round(time.time() - self.spawned_at, 3)))


def forwarded(record: logging.LogRecord, level: int) -> bool:
    """Whether a rank's record reaches the console whose level is `level`: none below it; at INFO
    and above, the pack's own records and any logger's warnings and errors (ComfyUI's INFO lines
    on a rank repeat what the ComfyUI process says, once per rank); below INFO (--verbose), all."""
    if record.levelno < level:
        return False
    if record.levelno >= logging.WARNING or level < logging.INFO:
        return True
    return record.name == LOGGER or record.name.startswith(LOGGER + ".")


class LogForwarder(logging.Handler):
    """A root-logger handler that sends the rank's records to the parent as Log messages."""

    def __init__(self, outbox: Outbox, level: int = logging.INFO) -> None:
        super().__init__()
        self.outbox = outbox
        self.console_level = level
        self.setFormatter(logging.Formatter("%(message)s"))  # message, then traceback and stack if any
        self._busy = threading.local()  # a record logged while sending one is dropped, not recursed into

    def filter(self, record: logging.LogRecord) -> bool:
        return forwarded(record, self.console_level) and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            self.outbox.send(Log(self.outbox.rank, record.levelno, record.name, self.format(record)))
        except Exception:
            self.handleError(record)
        finally:
            self._busy.on = False


def forward_logs(outbox: Outbox, level: int = logging.INFO) -> LogForwarder:
    """Send this rank's log records (and its Python warnings) to the parent from now on, those
    the parent's console shows at its level (see `forwarded`)."""
    handler = LogForwarder(outbox, level)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(level, logging.WARNING))  # as the ComfyUI process's root logger, for the records it shows
    pack = logging.getLogger(LOGGER)
    if pack.getEffectiveLevel() > level:
        pack.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn(...) -> the 'py.warnings' logger, at WARNING
    return handler


def relog(message: Log, log: logging.Logger) -> None:
    """Parent side: log a rank's record on the pack's logger, with the rank named."""
    name = "" if message.logger == LOGGER or message.logger.startswith(LOGGER + ".") else f"{message.logger}: "
    log.log(message.level, "[rank %d] %s%s", message.rank, name, message.text)
