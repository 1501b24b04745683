"""One job on its way through the ranks, as the parent sees it: what came back and when, and
what the outcomes add up to (the value, an interrupt, or the error to raise)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import JobFailedError, JobInterrupted
from .protocol import OUTCOMES, Failure, Interrupted, JobFailed, Outcome, Phase, Progress, Result


@dataclass(frozen=True)
class JobResult:
    value: Any
    summaries: tuple[dict, ...]
    seconds: float


@dataclass
class Flight:
    """A job in flight: each rank's outcome so far, and the times the deadlines count from."""

    job_id: int
    world_size: int
    t0: float = field(default_factory=time.monotonic)
    outcome: dict[int, Outcome] = field(default_factory=dict)
    last_event: float = field(default_factory=time.monotonic)
    progressed: bool = False  # before the first progress event, the (longer) load deadline applies
    stop_sent_at: float | None = None
    first_error_at: float | None = None

    @property
    def complete(self) -> bool:
        return len(self.outcome) >= self.world_size

    def waiting_for(self) -> list[int]:
        return [r for r in range(self.world_size) if r not in self.outcome]

    def alive_sign(self) -> None:
        """A rank showed it still works on the job (a step, a phase, an outcome)."""
        self.last_event = time.monotonic()

    def take(self, rank: int, message: Any) -> bool:
        """Record one message from `rank`; True if it is a step (Progress) of this job."""
        if getattr(message, "job_id", None) != self.job_id:
            return False
        if isinstance(message, Progress):
            self.alive_sign()
            self.progressed = True
            return True
        if isinstance(message, OUTCOMES):
            self.alive_sign()
            self.outcome[rank] = message
            if isinstance(message, JobFailed) and self.first_error_at is None:
                self.first_error_at = time.monotonic()
        return False

    def mark_stop(self) -> None:
        if self.stop_sent_at is None:
            self.stop_sent_at = time.monotonic()

    def failures(self) -> list[Failure]:
        return [m.failure for m in self.outcome.values() if isinstance(m, JobFailed)]

    def origin(self) -> Failure:
        """The failure to report: the first rank that failed of itself (not because a peer did)."""
        failures = self.failures()
        return next((f for f in failures if not f.peer), failures[0])

    def result(self) -> JobResult:
        """What the complete outcomes add up to: the value, or JobFailedError, or JobInterrupted."""
        if self.failures():
            raise job_failed_error(self.origin())
        stopped = [m for m in self.outcome.values() if isinstance(m, Interrupted)]
        if stopped:
            step = stopped[0].step
            raise JobInterrupted(f"Interrupted at step {step}; all ranks stopped together.", step=step)
        summaries = tuple(self.outcome[r].summary for r in range(self.world_size))
        value = self.outcome[0].value if isinstance(self.outcome[0], Result) else None
        return JobResult(value, summaries, time.monotonic() - self.t0)


def clip_text(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def job_failed_error(origin: Failure) -> JobFailedError:
    """The error the caller gets for a job that raised on a rank."""
    text = f"{origin.type} on rank {origin.rank}: {origin.message}"
    if origin.out_of_files:
        text = (f"Rank {origin.rank} ran out of open files and could not receive the job ({clip_text(origin.message)}). "
                f"Raise the open-file limit before starting ComfyUI ('ulimit -n 65536' in its shell, or "
                f"LimitNOFILE=65536 in its systemd unit); the ranks already lift their own limit to the hard one. "
                f"The group restarts with the next prompt.")
    elif origin.out_of_memory:
        text = (f"Rank {origin.rank} ran out of memory: lower the resolution, frame count or batch size, run "
                f"fewer ranks per device, or free memory on it (the group stays up). "
                f"{text[:1500]}")
    exc = JobFailedError(text)
    exc.remote_traceback = origin.traceback
    exc.remote_type = origin.type
    exc.remote_message = origin.message
    return exc


class Caller:
    """The caller's callbacks during one job. The first exception one raises (e.g. ComfyUI's
    interrupt, from its progress hook) stops the ranks (`stop`) and is kept, to be re-raised
    once they stopped or were left to finish in the background."""

    def __init__(self, on_progress: Callable[[Any], None] | None, on_phase: Callable[[Phase], None] | None,
                 stop: Callable[[], None]) -> None:
        self.on_progress, self.on_phase, self.stop = on_progress, on_phase, stop
        self.error: BaseException | None = None

    def call(self, callback: Callable[[Any], None] | None, item: Any) -> None:
        if callback is None or self.error is not None:
            return
        try:
            callback(item)
        except BaseException as exc:  # stop the ranks first, then re-raise it
            self.error = exc
            self.stop()
