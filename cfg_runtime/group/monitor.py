"""A thread that watches the ranks' process sentinels and wakes the parent's waits on a death.

The parent's waiting loops (start-up, a job, settling an interrupted job) wait on the ranks'
pipes plus this watch's wake-up fd. When a rank process ends, the thread records it and makes
the fd readable for good, so every later wait returns at once and the loop looks at the deaths.
"""
from __future__ import annotations

import os
import threading
from multiprocessing.connection import wait as wait_any
from typing import Any, Sequence


class DeathWatch:
    """Watches processes (multiprocessing.Process) from a daemon thread; see the module doc."""

    def __init__(self, processes: Sequence[Any]) -> None:
        self._processes = list(processes)
        self._wake_r, self._wake_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self._dead: list[Any] = []  # in the order the thread saw them end
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cfgp-death-watch", daemon=True)
        self._thread.start()

    def fileno(self) -> int:
        """Readable once any watched process has ended (for multiprocessing.connection.wait)."""
        return self._wake_r

    @property
    def dead(self) -> tuple[Any, ...]:
        """The processes that ended, in the order they were seen."""
        return tuple(self._dead)

    def _run(self) -> None:
        watching = {p.sentinel: p for p in self._processes}
        while watching:
            ready = wait_any(list(watching) + [self._stop_r])
            if self._stop_r in ready:
                return
            for sentinel in ready:
                self._dead.append(watching.pop(sentinel))
            try:
                os.write(self._wake_w, b"x")  # never read: the fd stays readable
            except OSError:
                return

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread (it wakes on the stop byte at once; `timeout` only bounds the join) and
        close the fds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
