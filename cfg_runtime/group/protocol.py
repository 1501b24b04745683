"""The messages between the ComfyUI process (the parent) and its ranks, one frozen dataclass each.

Every message crosses one rank's duplex pipe. The parent never joins a collective: it only
sends these and reads these, under deadlines (``handle.WorkerGroup``). No tagged tuples,
no dicts with agreed keys: a message's type says what it is, its fields say what it carries.

Start-up (once per group)::

    parent                                   rank r (spawned, one per device)
      Phase(None, SPAWNING, "starting N workers ...")      (to the caller's on_phase only)
                                <- Phase(r, STARTED)   the process runs (before torch)
                                <- Phase(r, TORCH)     torch imported
                                <- Phase(r, JOINED)    process group joined (first barrier)
                                <- Phase(r, READY)     "rank r ready on cuda:1 in 3.2 s"
                                <- Ready(r, ..., setup)  or StartFailed(Failure) and the rank exits
      Phase(None, READY, "N workers ready in 3.4 s")       (to the caller's on_phase only)

One job (every rank gets the same job; rank 0 alone reports steps and the value)::

      Job(job_id, blob) ->
                                <- Phase(r, JOB, text, done, total)   ctx.phase(...) on any rank
                                <- Progress(job_id, payload)          ctx.emit(...) on rank 0
                                <- Result(job_id, 0, value, summary)  rank 0
                                <- Done(job_id, r, summary)           ranks 1..N-1
                                <- Interrupted(job_id, r, step, summary)   all stopped together
                                <- JobFailed(job_id, Failure)         the job raised on rank r

At any time, also during start-up and while a job runs::

                                <- Log(r, level, logger, text)   re-logged as "[rank r] text"

Teardown: ``Shutdown()`` ->, then SIGTERM, then SIGKILL (each after a grace in GroupSpec).
An interrupt travels not as a message but as a shared ``multiprocessing.Event`` that rank 0
reads at each model evaluation and shares in that step's exchange.

Plain Python: no torch here (a rank reports STARTED before it imports torch).
"""
from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass, field
from typing import Any, Union

from ..errors import PeerFailed

TRACEBACK_CHARS = 6000  # the tail of a rank's traceback that travels


# --- a rank's failure, as it travels -------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """An exception raised on a rank, reduced to what the parent reports."""

    rank: int
    type: str
    message: str
    traceback: str = ""
    peer: bool = False  # PeerFailed: this rank left because another rank failed in the same step
    unpacking: bool = False  # the job could not be unpacked here: this rank never joined its collectives

    @classmethod
    def of(cls, exc: BaseException, rank: int, unpacking: bool = False) -> "Failure":
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-TRACEBACK_CHARS:]
        return cls(rank, type(exc).__name__, str(exc), text, isinstance(exc, PeerFailed), unpacking)

    @property
    def out_of_files(self) -> bool:
        """The rank hit its open-file limit: a tensor in a pipe arrives as file descriptors, and at the limit
        the kernel drops them ('received 0 items of ancdata'), or an open fails with EMFILE."""
        return "items of ancdata" in self.message or "Too many open files" in self.message

    @property
    def out_of_memory(self) -> bool:
        """An allocation failure (CUDA OOM, or a host allocation refused)."""
        message = self.message.lower()
        return self.type in ("OutOfMemoryError", "MemoryError") or "out of memory" in message \
            or "can't allocate memory" in message


# --- parent -> rank ----------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """Run this job. ``blob`` is the job pickled apart (shipping.dumps), so that a job the rank
    cannot rebuild fails only itself (JobFailed) and the message still arrives whole."""

    job_id: int
    blob: bytes


@dataclass(frozen=True)
class Shutdown:
    """Leave the process group and exit."""


# --- rank -> parent ----------------------------------------------------------------------
class Stage(str, enum.Enum):
    """What a Phase reports."""

    SPAWNING = "spawning"  # the group: the rank processes are being started (rank None)
    STARTED = "started"    # the rank's process runs (Python up; torch not imported yet)
    TORCH = "torch"        # torch imported
    JOINED = "joined"      # the process group is joined (its first barrier passed)
    READY = "ready"        # the rank (or, with rank None, the whole group) is ready for jobs
    JOB = "job"            # a job's own phase, from ctx.phase(...): e.g. loading the model


@dataclass(frozen=True)
class Phase:
    """How far a rank (or, with rank None, the group) has come: for progress text in the UI.

    elapsed_s: since the rank was spawned for start-up stages, since the job reached the rank
    for JOB. done/total: a count the text refers to (e.g. bytes or tensors loaded), or None.
    """

    rank: int | None
    stage: Stage
    text: str
    done: int | float | None = None
    total: int | float | None = None
    job_id: int | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Ready:
    """The rank joined the group and waits for jobs."""

    rank: int
    pid: int
    device: str
    backend: str
    torch_version: str
    gloo_listener_closed: bool
    seconds: float  # from spawn to ready
    setup: dict = field(default_factory=dict)  # what the init hook reported (the rank's effective configuration)


@dataclass(frozen=True)
class StartFailed:
    """The rank could not join the group; it exits after sending this."""

    failure: Failure


@dataclass(frozen=True)
class Log:
    """A log record of a rank, formatted there (message, then traceback if any)."""

    rank: int
    level: int
    logger: str
    text: str


@dataclass(frozen=True)
class Progress:
    """A step of the job, from rank 0 (ctx.emit): the payload goes to the caller's on_progress."""

    job_id: int
    payload: Any


@dataclass(frozen=True)
class Result:
    """Rank 0 finished the job: its value is the job's value."""

    job_id: int
    rank: int
    value: Any
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Done:
    """A rank other than 0 finished the job."""

    job_id: int
    rank: int
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Interrupted:
    """The rank stopped at `step` on request (every rank stops at the same step)."""

    job_id: int
    rank: int
    step: int | None
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobFailed:
    """The job raised on a rank."""

    job_id: int
    failure: Failure

    @property
    def rank(self) -> int:
        return self.failure.rank


Outcome = Union[Result, Done, Interrupted, JobFailed]  # a rank's last word on a job
OUTCOMES = (Result, Done, Interrupted, JobFailed)
