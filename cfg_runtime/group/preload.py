"""Imports a rank starts in the background while it joins the group, finished before its first
job is unpickled: two threads importing the same package at once can see each other's modules
half initialised ("cannot import name ... from partially initialized module")."""
from __future__ import annotations

import threading
from typing import Callable

_threads: list[threading.Thread] = []


def start(imports: Callable[[], None], name: str) -> None:
    """Run `imports` in a daemon thread of this rank; wait() joins it."""
    thread = threading.Thread(target=imports, name=name, daemon=True)
    _threads.append(thread)
    thread.start()


def wait() -> None:
    """Block until every background import of this rank has finished."""
    while _threads:
        _threads.pop().join()
