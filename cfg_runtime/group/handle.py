"""The worker group handle, seen from the ComfyUI process.

The parent is not a member of the process group: it talks to each rank over a pipe
(messages in ``protocol``) and never enters a collective, so a dead or hung rank can't
freeze it. Every wait has a deadline (``GroupSpec``); a thread watches the process
sentinels and wakes the wait when a rank dies; after any fault the group is torn down and
the next job starts a fresh one.
"""
from __future__ import annotations

import logging
import math
import multiprocessing as mp
import threading
import time
import weakref
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable

from ..errors import (CFGParallelError, GroupConfigError, GroupStartError, JobInterrupted, JobTimeoutError,
                      ShippingError, WorkerDiedError)
from . import warm_start
from .flight import Caller, Flight, JobResult, job_failed_error
from .host import check_host_memory, fd_count, make_store_dir, release_uncollected_handles, sweep_stale_stores
from .inbox import EOF, poll
from .protocol import Job, Phase, Progress, Ready, Stage, StartFailed
from .rank_os import raise_fd_limit, use_pid_named_mp_tempdir, use_pid_named_semaphores
from .ranks import Processes, RankProcess
from .shipping import dumps
from .spec import GroupSpec, check_device_backend

log = logging.getLogger("cfg_parallel")

__all__ = ["JobResult", "WorkerGroup"]

OnPhase = Callable[[Phase], None]


class _CallbackFailed(Exception):
    """A caller's callback raised during start-up: re-raised as is, and the ranks keep starting."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class WorkerGroup:
    """One process per device; persistent across jobs until shut down or faulted."""

    def __init__(self, spec: GroupSpec) -> None:
        if spec.world_size < 1:
            raise GroupConfigError("A worker group needs at least one device.")
        check_device_backend(spec.devices, spec.backend)
        for name in spec.DURATIONS:
            value = getattr(spec, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise GroupConfigError(f"{name} must be a positive number of seconds, got {value!r}.")
        self.spec = spec
        self.state = "new"  # new -> starting -> ready -> (failed | closed)
        self.last_error = ""
        self.jobs_run = 0
        self.last_job: dict = {}
        self._procs = Processes()
        self._finalizer: weakref.finalize | None = None
        self._ctx = warm_start.context() or mp.get_context("spawn")  # forked warm where the fork server runs
        self._stop_event = None
        self._spawning: Phase | None = None  # the SPAWNING phase, for a waiter that did not see the spawn
        self._spawning_told: OnPhase | None = None
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._pending: Flight | None = None  # an interrupted job the ranks are still finishing
        self._fd_baseline: dict[int, int] = {}  # pid -> open fds after the first job (model loaded)

    @property
    def ranks(self) -> list[RankProcess]:
        return self._procs.ranks

    # --- lifecycle -------------------------------------------------------
    def start(self, interrupt_requested: Callable[[], bool] | None = None, on_phase: OnPhase | None = None) -> None:
        """Spawn the ranks and wait until every one has joined the group."""
        self.spawn(on_phase)
        self.await_ready(interrupt_requested, on_phase)

    def spawn(self, on_phase: OnPhase | None = None) -> None:
        """Start the rank processes and return at once (state 'starting'); await_ready() waits for them."""
        import torch.multiprocessing  # noqa: F401  (tensor sharing through pipes)

        spec = self.spec
        check_host_memory(spec)
        where = f"{', '.join(spec.devices)} ({spec.resolved_backend})"
        self._spawning = Phase(None, Stage.SPAWNING, f"starting {spec.world_size} worker(s) on {where}", 0,
                               spec.world_size)
        self._spawning_told = on_phase
        if on_phase is not None:
            on_phase(self._spawning)
        raise_fd_limit()  # sending a model's weights holds about two fds per tensor until the ranks take them
        sweep_stale_stores()
        store_dir = make_store_dir()
        use_pid_named_mp_tempdir(keep_existing=True)  # a killed ComfyUI's folder is swept later
        use_pid_named_semaphores()  # and so are the semaphores of the stop event below
        self._stop_event = self._ctx.Event()
        self._t0 = time.monotonic()
        self.state = "starting"
        log.info("cfg-parallel: starting %d rank(s) on %s", spec.world_size, where)
        # However this handle ends (teardown, garbage collection, interpreter exit), the ranks go too.
        self._finalizer = weakref.finalize(self, self._procs.release, spec.shutdown_grace_s,
                                           spec.terminate_grace_s, spec.kill_wait_s)
        try:
            self._procs.spawn(spec, self._ctx, store_dir, self._stop_event)
        except BaseException:
            self.teardown("could not spawn the ranks")
            raise

    def await_ready(self, interrupt_requested: Callable[[], bool] | None = None,
                    on_phase: OnPhase | None = None) -> None:
        """Wait until every rank reported ready, passing their start-up phases to on_phase. An
        interrupt (or an exception from on_phase) returns within a poll (spec.poll_s) and leaves the
        ranks starting, so the next prompt does not start them again."""
        if self.state != "starting":
            return
        if on_phase is not None and self._spawning is not None and on_phase is not self._spawning_told:
            on_phase(self._spawning)  # a group spawned for someone else (queued prompt, launch): say it starts
            self._spawning_told = on_phase
        try:
            self._await_ready(interrupt_requested, on_phase)
        except JobInterrupted:
            raise
        except _CallbackFailed as failed:
            raise failed.exc from None
        except BaseException:
            self.teardown("start-up failed")
            raise
        self.state = "ready"
        seconds = max(r.ready.seconds for r in self.ranks)  # from spawn to the last rank's ready
        log.info("cfg-parallel group ready: %d rank(s) on %s (%s) in %.1f s", self.spec.world_size,
                 ", ".join(self.spec.devices), self.spec.resolved_backend, seconds)
        if on_phase is not None:
            on_phase(Phase(None, Stage.READY, f"{self.spec.world_size} worker(s) ready in {seconds:.1f} s",
                           self.spec.world_size, self.spec.world_size, elapsed_s=round(seconds, 3)))

    def refresh(self) -> None:
        """Take the start-up messages that arrived, without waiting: a group started ahead of its
        first job (with ComfyUI) shows ready in Group Status before a prompt waits for it."""
        if self.state != "starting":
            return
        try:
            while pending := [r for r in self.ranks if r.ready is None]:
                messages, _ = poll(self._procs.watch, 0.0, pending)
                if not messages:
                    return  # still starting (a death is reported by the next await_ready)
                caller = Caller(None, None, stop=lambda: None)
                for rank, message in messages:
                    self._take_startup(rank, message, caller)
        except GroupStartError as exc:
            self.teardown(f"start-up failed: {exc}")
            return
        self.await_ready()

    def _await_ready(self, interrupt_requested: Callable[[], bool] | None, on_phase: OnPhase | None) -> None:
        while True:
            pending = [r for r in self.ranks if r.ready is None]
            if not pending:
                return
            if interrupt_requested is not None and interrupt_requested():
                raise JobInterrupted("Interrupted while the worker group was starting; the ranks keep starting in "
                                     "the background, so the next prompt does not start them again.")
            if time.monotonic() - self._t0 > self.spec.start_timeout_s:
                raise GroupStartError(
                    f"Worker group did not start within {self.spec.start_timeout_s:.0f} s "
                    f"(ranks {[r.rank for r in pending]} never reported ready).")
            messages, died = poll(self._procs.watch, self.spec.poll_s, pending)
            caller = Caller(None, on_phase, stop=lambda: None)  # a callback's error waits for the batch
            for rank, message in messages:
                self._take_startup(rank, message, caller)
            if caller.error is not None:
                raise _CallbackFailed(caller.error)
            if died:
                dead = next(r for r in self.ranks if r.process in self._procs.watch.dead)
                raise GroupStartError(f"Rank {dead.rank} ({dead.config.device}) exited during start-up "
                                      f"with code {dead.process.exitcode}.")

    def _take_startup(self, rank: RankProcess, message: Any, caller: Caller) -> None:
        where = f"Rank {rank.rank} ({rank.config.device})"
        if message is EOF:
            rank.process.join(self.spec.poll_s)
            raise GroupStartError(f"{where} exited during start-up with code {rank.process.exitcode}.")
        if isinstance(message, StartFailed):
            raise GroupStartError(f"{where} could not join the group: {message.failure.type}: "
                                  f"{message.failure.message}")
        if isinstance(message, Ready):
            rank.ready = message
        elif isinstance(message, Phase):
            caller.call(caller.on_phase, message)

    def usable(self) -> bool:
        """Starting or ready, with every process alive."""
        return self.state in ("starting", "ready") and self._processes_running()

    def alive(self) -> bool:
        return self.state == "ready" and self._processes_running()

    def _processes_running(self) -> bool:
        """Every rank process runs. The sentinel (closed when the process ends) is asked as well as
        waitpid: a rank that something else reaped would otherwise look alive forever."""
        if not all(r.process.is_alive() for r in self.ranks):
            return False
        return not wait_any([r.process.sentinel for r in self.ranks], timeout=0)

    def teardown(self, reason: str = "") -> None:
        """Stop every rank: ask, then SIGTERM, then SIGKILL (graces in GroupSpec). Idempotent."""
        spec = self.spec
        if reason:
            self.last_error = reason
        self._procs.release(spec.fault_shutdown_grace_s if reason else spec.shutdown_grace_s,
                            spec.terminate_grace_s, spec.kill_wait_s)
        if self._finalizer is not None:
            self._finalizer.detach()
        if reason:
            release_uncollected_handles(spec.handle_release_s)
            sweep_stale_stores()  # what the killed ranks left (their multiprocessing folders)
        self.state = "failed" if reason else "closed"

    def fd_leak(self) -> str:
        """Why a rank holds too many open fds ('' when none does). A local process can make a rank
        leak one fd per connection to its gloo port (accepted, never closed): the group is then
        respawned between jobs, long before the rank reaches its fd limit and aborts."""
        for r in self.ranks:
            base = self._fd_baseline.get(r.process.pid)
            now = fd_count(r.process.pid)
            if base is not None and now is not None and now > base + self.spec.fd_margin:
                return (f"rank {r.rank} (pid {r.process.pid}) holds {now} open fds, {now - base} more than "
                        f"after its first job (connections to its gloo port leak them)")
        return ""

    def pids(self) -> list[int]:
        return [r.process.pid for r in self.ranks if r.process.pid]

    # --- jobs ----------------------------------------------------------------
    def run(self, job: Any, on_progress: Callable[[Any], None] | None = None,
            interrupt_requested: Callable[[], bool] | None = None, on_phase: OnPhase | None = None) -> JobResult:
        """Run `job.run(ctx)` on every rank; return rank 0's value. Never blocks past a deadline.
        on_progress gets rank 0's ctx.emit payloads; on_phase the Phase messages of ctx.phase(...)
        (from any rank) and, while an interrupted job is settled first, that job's phases."""
        with self._lock:
            self.settle(interrupt_requested, on_phase)
            if not self.alive():
                raise GroupStartError(f"The worker group is not running ({self.last_error or self.state}); "
                                      f"start it first.")
            if interrupt_requested is not None and interrupt_requested():  # e.g. during the model's capture
                raise JobInterrupted("Interrupted before the job was sent to the ranks.")
            self._stop_event.clear()
            flight = Flight(self.jobs_run, self.spec.world_size)
            self.jobs_run += 1
            self._send_job(flight.job_id, job)
            return self._collect(flight, Caller(on_progress, on_phase, lambda: self._stop(flight)),
                                 interrupt_requested)

    def _send_job(self, job_id: int, job: Any) -> None:
        for r in self.ranks:
            try:
                blob = dumps(Job(job_id, dumps(job)))  # per rank: shared-memory handles are single-use
            except Exception as exc:
                raise ShippingError(f"The job cannot be sent to the workers: {type(exc).__name__}: {exc}") from None
            try:
                r.conn.send_bytes(blob)
            except (OSError, BrokenPipeError) as exc:
                self.teardown(f"could not send the job to rank {r.rank}: {exc}")
                raise WorkerDiedError(f"Rank {r.rank} is gone ({exc}); the group was shut down and "
                                      f"will be restarted by the next job.") from None

    def _stop(self, flight: Flight) -> None:
        """Ask the ranks to stop (rank 0 reads the flag at its next model evaluation)."""
        if flight.stop_sent_at is None:
            self._stop_event.set()
            flight.mark_stop()

    def settle(self, interrupt_requested: Callable[[], bool] | None = None, on_phase: OnPhase | None = None) -> None:
        """Wait for the ranks to finish a job that was interrupted before they stopped (a model
        load, a long step), under the same deadlines as a running job. A fault tears the group
        down; another interrupt (or an exception from on_phase) returns at once and leaves the job
        pending."""
        flight = self._pending
        if flight is None:
            return
        caller = Caller(None, on_phase, stop=lambda: None)
        while not flight.complete:
            if interrupt_requested is not None and interrupt_requested():
                raise JobInterrupted("Interrupted while the ranks were finishing the previous, interrupted job.")
            if flight.progressed and time.monotonic() - flight.stop_sent_at > self.spec.interrupt_grace_s:
                self._pending = None
                self.teardown(f"ranks did not stop within {self.spec.interrupt_grace_s:.0f} s of an interrupt")
                return
            try:
                self._check_deadlines(flight)
                self._receive(flight, caller)  # progress of a job that nobody waits for
            except CFGParallelError as exc:  # the group was torn down; the next job starts a new one
                log.warning("cfg-parallel: the interrupted job ended in a fault: %s", exc)
                self._pending = None
                return
            if caller.error is not None:
                raise caller.error
        self._pending = None
        failures = flight.failures()
        if failures:
            log.warning("cfg-parallel: the interrupted job failed on rank %s after the interrupt: %s: %s",
                        failures[0].rank, failures[0].type, failures[0].message)

    def _receive(self, flight: Flight, caller: Caller) -> None:
        """Read what the ranks sent within a poll: record outcomes, pass progress and phases on."""
        waiting = [r for r in self.ranks if r.rank not in flight.outcome]
        messages, died = poll(self._procs.watch, self.spec.poll_s, waiting)
        for rank, message in messages:
            if message is EOF:
                rank.process.join(self.spec.poll_s)
                died = True
            elif isinstance(message, Phase):
                if message.job_id == flight.job_id:
                    flight.alive_sign()
                    caller.call(caller.on_phase, message)
            elif flight.take(rank.rank, message) and isinstance(message, Progress):
                caller.call(caller.on_progress, message.payload)
        if died:
            self._check_deaths()

    def _check_deadlines(self, flight: Flight) -> None:
        now = time.monotonic()
        # a rank that could not unpack the job never joins its collectives: the others would wait in vain
        grace = min(1.0, self.spec.first_error_grace_s) if any(f.unpacking for f in flight.failures()) \
            else self.spec.first_error_grace_s
        if flight.first_error_at is not None and now - flight.first_error_at > grace:
            origin = flight.origin()
            self.teardown(f"rank {origin.rank} failed; ranks {flight.waiting_for()} did not finish")
            raise job_failed_error(origin)
        limit = self.spec.step_timeout_s if flight.progressed else max(self.spec.step_timeout_s,
                                                                       self.spec.load_timeout_s)
        if now - flight.last_event > limit:
            phase = "between steps" if flight.progressed else "while loading the model and running the first step"
            waiting = flight.waiting_for()
            self.teardown("step timeout")
            raise JobTimeoutError(
                f"No progress for {limit:.0f} s {phase} (ranks {waiting} still busy); the group was shut down "
                f"and will be restarted by the next job. Raise the step timeout for very slow steps.")

    def _detach_if_stopped(self, flight: Flight, caller: Caller) -> None:
        """Once the ranks were asked to stop and have not within the detach time, return to the
        caller and let them finish in the background (they are loading the model or inside a long
        step; they stop at their next model evaluation) and keep the group."""
        detach_s = self.spec.detach_mid_sampling_s if flight.progressed else self.spec.detach_after_s
        if flight.stop_sent_at is None or time.monotonic() - flight.stop_sent_at <= detach_s:
            return
        self._pending = flight
        where = "during a step" if flight.progressed else "while the ranks load the model"
        log.info("cfg-parallel: interrupted %s; the ranks finish it in the background", where)
        if caller.error is not None:
            raise caller.error
        raise JobInterrupted("Interrupted " + ("during a step" if flight.progressed else
                                               "while the ranks were loading the model") +
                             "; they finish it in the background and keep it for the next prompt.")

    def _collect(self, flight: Flight, caller: Caller, interrupt_requested) -> JobResult:
        while not flight.complete:
            if interrupt_requested is not None and flight.stop_sent_at is None and interrupt_requested():
                self._stop(flight)
            self._detach_if_stopped(flight, caller)
            self._check_deadlines(flight)
            self._receive(flight, caller)
        if caller.error is not None:
            raise caller.error
        result = flight.result()  # raises JobFailedError (the group stays) or JobInterrupted
        if not self._fd_baseline:
            self._fd_baseline = {pid: n for pid, n in ((p, fd_count(p)) for p in self.pids()) if n is not None}
        self.last_job = {"seconds": round(result.seconds, 3), "per_rank": result.summaries}
        return result

    def _check_deaths(self) -> None:
        for r in self.ranks:
            if not r.process.is_alive():
                msg = r.death("during the job") + "; the group was shut down and will be restarted by the next job."
                self.teardown(msg)
                raise WorkerDiedError(msg)

    def status(self) -> dict:
        return {
            "state": self.state if self.state not in ("starting", "ready") or self.usable() else "failed",
            "finishing_interrupted_job": self._pending is not None,
            "devices": list(self.spec.devices),
            "backend": self.spec.resolved_backend,
            "pids": self.pids(),
            "jobs_run": self.jobs_run,
            "last_error": self.last_error,
            "last_job": self.last_job,
            "rank_setup": [r.ready.setup if r.ready is not None else None for r in self.ranks],
        }
