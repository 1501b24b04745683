"""Errors of the runtime. Each message says what went wrong and what to do."""
from __future__ import annotations


def clip(text: object, limit: int = 80) -> str:
    """A user's value as it goes into a message: repr-quoted, at most `limit` characters."""
    s = str(text)
    if len(s) <= limit:
        return repr(s)
    return repr(s[:limit]) + f"... ({len(s)} characters)"


class CFGParallelError(RuntimeError):
    """Base class: every error this pack raises on purpose."""


class PolicyError(CFGParallelError, ValueError):
    """A policy (branches, rule, parameters) is malformed."""


class GroupConfigError(CFGParallelError, ValueError):
    """The requested worker group (size, devices) cannot exist on this machine."""


class ModelInputError(CFGParallelError, ValueError):
    """The model could not take the sampling's inputs (e.g. conditioning from another model's text encoder)."""


class PredictionError(CFGParallelError):
    """A branch produced a prediction of the wrong shape or with NaN/inf values."""


class GroupStartError(CFGParallelError):
    """The worker processes did not come up."""


class WorkerDiedError(CFGParallelError):
    """A worker process ended during a job; the group was torn down."""


class JobTimeoutError(CFGParallelError):
    """No progress within the deadline; the group was torn down."""


class JobFailedError(CFGParallelError):
    """The job raised on a rank; the group stays usable."""


class JobInterrupted(CFGParallelError):
    """The job was stopped on request; every rank stopped at the same step."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class PeerFailed(RuntimeError):
    """Raised on a rank: another rank failed in this step, so this one leaves the job cleanly
    (the parent reports the other rank's error, not this one)."""


class ShippingError(CFGParallelError):
    """Something the job needs cannot be sent to the worker processes."""
