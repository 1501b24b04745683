"""Small jobs and start-up hooks that exercise the worker group's protocol (phases, logs)."""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass


def noisy_init(device: str, data: bytes) -> dict:
    """A worker_init hook that logs while the rank starts (before it joins the group) and reports
    what it was given (the rank's Ready carries the report)."""
    logging.getLogger("cfg_parallel").info("init hook ran on %s", device)
    logging.getLogger("some.library").warning("start-up warning on %s", device)
    return {"device": device, "data": data.decode()}


_preloaded: list[str] = []


def slow_preload_init(device: str, data: bytes) -> dict:
    """A worker_init hook that starts a background import taking a second (group.preload)."""
    from cfg_runtime.group import preload

    def imports() -> None:
        time.sleep(1.0)
        _preloaded.append("done")

    preload.start(imports, "test-preload")
    return {}


@dataclass(frozen=True)
class PreloadSeenJob:
    """Whether the rank's background import had finished when this job was unpickled and ran."""

    def run(self, ctx):
        return list(_preloaded)


@dataclass(frozen=True)
class LoggingJob:
    """Logs on `rank`: a warning on a foreign logger, INFO on the pack's and on a foreign one
    (only the first two should travel), a Python warning and an error with a traceback; and
    reports a phase on every rank."""

    rank: int = 1
    text: str = "disk nearly full"

    def run(self, ctx):
        ctx.phase(f"loading the model on rank {ctx.rank}", done=ctx.rank, total=ctx.world_size)
        if ctx.rank == self.rank:
            logging.getLogger("some.library").warning("%s on this rank", self.text)
            logging.getLogger("cfg_parallel.sub").info("pack info from rank %d", ctx.rank)
            logging.getLogger("some.library").info("foreign info: stays on the rank at INFO")
            warnings.warn("a python warning from the job", UserWarning)
            try:
                raise ValueError("caught and logged")
            except ValueError:
                logging.getLogger("cfg_parallel").exception("an error with its traceback")
        ctx.emit({"step": 1, "total": 1})
        return ctx.rank


@dataclass(frozen=True)
class EnvJob:
    """What a rank sees of its process: an environment variable, its parent's pid, the modules it holds."""

    name: str
    modules: tuple[str, ...] = ()

    def run(self, ctx):
        import os
        import sys

        return {"value": os.environ.get(self.name), "ppid": os.getppid(),
                "held": [m for m in self.modules if m in sys.modules]}
