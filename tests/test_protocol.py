"""The worker protocol with real worker processes (gloo on the CPU): typed messages, start-up
phases before Ready, job phases, and every rank's log records in the parent's log."""
import dataclasses
import logging
import multiprocessing as mp
import pickle
import subprocess
import sys
import time

import pytest

from cfg_runtime.errors import PeerFailed
from cfg_runtime.group import GroupSpec, WorkerGroup
from cfg_runtime.group.monitor import DeathWatch
from cfg_runtime.group.protocol import Failure, Job, JobFailed, Phase, Ready, Stage
from support.group_jobs import LoggingJob, PreloadSeenJob

START_ORDER = [Stage.STARTED, Stage.TORCH, Stage.JOINED, Stage.READY]


def test_messages_are_frozen_and_travel_whole():
    failure = Failure.of(PeerFailed("rank(s) [1] failed at step 3"), rank=0)
    assert failure.peer and failure.type == "PeerFailed" and "PeerFailed" in failure.traceback
    message = JobFailed(7, failure)
    assert pickle.loads(pickle.dumps(message)) == message and message.rank == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.job_id = 8
    phase = Phase(1, Stage.JOB, "loading", 3, 10, job_id=7)
    assert pickle.loads(pickle.dumps(phase)) == phase
    assert Failure(0, "OutOfMemoryError", "CUDA out of memory").out_of_memory
    assert not Failure(0, "RuntimeError", "boom").out_of_memory
    assert pickle.loads(pickle.dumps(Job(1, b"x"))) == Job(1, b"x")


def test_the_rank_entry_reports_before_it_imports_torch():
    """A rank imports cfg_runtime.group.worker first: that must not pull torch in (STARTED
    is sent before the import that takes the seconds)."""
    code = "import sys, cfg_runtime.group.worker; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_death_watch_wakes_a_wait_when_a_process_ends():
    from multiprocessing.connection import wait

    proc = mp.get_context("spawn").Process(target=time.sleep, args=(0.3,), daemon=True)
    proc.start()
    watch = DeathWatch([proc])
    try:
        assert wait([watch], timeout=0) == []
        t0 = time.monotonic()
        assert wait([watch], timeout=30) == [watch]
        assert time.monotonic() - t0 < 30 and watch.dead == (proc,)
        assert wait([watch], timeout=0) == [watch]  # stays readable: every later wait sees it
    finally:
        watch.close()
        proc.join(5)


@pytest.fixture(scope="module")
def started():
    """A fresh group whose ranks log during start-up; the phases and records it produced."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    pack = logging.getLogger("cfg_parallel")
    old_level = pack.level
    pack.setLevel(logging.DEBUG)
    pack.addHandler(handler)
    g = WorkerGroup(GroupSpec(("cpu", "cpu"), worker_init="support.group_jobs:noisy_init",
                              worker_init_data=b"the parent's launch options"))
    phases = []

    def on_phase(phase):
        ready = None if phase.rank is None else g.ranks[phase.rank].ready
        phases.append((phase, ready))

    try:
        g.start(on_phase=on_phase)
        yield g, phases, records
    finally:
        pack.removeHandler(handler)
        pack.setLevel(old_level)
        g.teardown()


def test_start_up_phases_arrive_in_order_before_ready(started):
    g, phases, _ = started
    assert phases[0][0].rank is None and phases[0][0].stage is Stage.SPAWNING and phases[0][0].total == 2
    assert phases[-1][0].rank is None and phases[-1][0].stage is Stage.READY and phases[-1][0].done == 2
    for rank in range(2):
        mine = [(p, ready) for p, ready in phases if p.rank == rank]
        assert [p.stage for p, _ in mine] == START_ORDER
        assert all(ready is None for _, ready in mine), "a phase came after the rank's Ready"
        assert all(a.elapsed_s <= b.elapsed_s for (a, _), (b, _) in zip(mine, mine[1:]))
        assert mine[-1][0].text.startswith(f"rank {rank} ready on cpu in ")
        assert isinstance(g.ranks[rank].ready, Ready) and g.ranks[rank].ready.pid == g.pids()[rank]
        assert g.ranks[rank].ready.setup == {"device": "cpu", "data": "the parent's launch options"}
    assert g.status()["rank_setup"] == [{"device": "cpu", "data": "the parent's launch options"}] * 2


def test_start_up_logs_reach_the_parent_with_the_rank_named(started):
    _, _, records = started
    texts = [r.getMessage() for r in records]
    for rank in range(2):
        assert f"[rank {rank}] init hook ran on cpu" in texts, texts
        assert f"[rank {rank}] some.library: start-up warning on cpu" in texts, texts
        assert any(t.startswith(f"cfg-parallel: rank {rank} ready on cpu in ") for t in texts)


def test_a_job_logs_and_phases_on_any_rank_reach_the_parent(started, caplog):
    g, _, _ = started
    caplog.set_level(logging.INFO, logger="cfg_parallel")
    phases, progress = [], []
    result = g.run(LoggingJob(rank=1), on_progress=progress.append, on_phase=phases.append)
    assert result.value == 0 and progress == [{"step": 1, "total": 1}]
    group_words = ("unpacking the job", "first job unpacked in ")  # the group's own word first
    own = [p for p in phases if not p.text.startswith(group_words)]
    assert sorted((p.rank, p.stage, p.text, p.done, p.total) for p in own) == [
        (r, Stage.JOB, f"loading the model on rank {r}", r, 2) for r in range(2)]
    assert sorted(p.rank for p in phases if p.text.startswith("unpacking the job")) == [0, 1]
    assert all(p.job_id == g.jobs_run - 1 for p in phases)
    by_text = {r.getMessage(): r for r in caplog.records if r.name == "cfg_parallel"}
    warning = by_text.get("[rank 1] some.library: disk nearly full on this rank")
    assert warning is not None and warning.levelno == logging.WARNING, list(by_text)
    assert by_text["[rank 1] pack info from rank 1"].levelno == logging.INFO
    assert any("[rank 1] py.warnings:" in t and "a python warning from the job" in t for t in by_text)
    error = next(r for t, r in by_text.items() if t.startswith("[rank 1] an error with its traceback"))
    assert error.levelno == logging.ERROR and "ValueError: caught and logged" in error.getMessage()
    assert not any("foreign info" in t for t in by_text), "a foreign INFO record must stay on the rank"
    assert not any(t.startswith("[rank 0] some.library") for t in by_text)
    assert "[rank 0] loading the model on rank 0" in by_text  # job phases are logged too


def test_at_a_verbose_console_every_record_of_a_rank_travels(caplog):
    """A console at DEBUG (ComfyUI started with --verbose): the ranks follow it, foreign INFO included."""
    caplog.set_level(logging.DEBUG, logger="cfg_parallel")
    g = WorkerGroup(GroupSpec(("cpu",), log_level=logging.DEBUG))
    try:
        g.start()
        g.run(LoggingJob(rank=0))
    finally:
        g.teardown()
    texts = [r.getMessage() for r in caplog.records if r.name == "cfg_parallel"]
    assert "[rank 0] some.library: foreign info: stays on the rank at INFO" in texts, texts
    assert "[rank 0] pack info from rank 0" in texts


def test_an_on_phase_that_raises_during_start_up_leaves_the_ranks_starting():
    g = WorkerGroup(GroupSpec(("cpu", "cpu")))

    class Stop(Exception):
        pass

    def on_phase(phase):
        if phase.rank is not None:
            raise Stop()

    try:
        with pytest.raises(Stop):
            g.start(on_phase=on_phase)
        assert g.state == "starting" and g.usable()
        g.await_ready()
        assert g.alive()
    finally:
        g.teardown()


def test_every_grace_is_in_the_spec_and_validated():
    seconds = {f.name for f in dataclasses.fields(GroupSpec) if f.name.endswith("_s")}
    assert seconds == set(GroupSpec.DURATIONS)
    for name in GroupSpec.DURATIONS:
        with pytest.raises(Exception, match=name):
            WorkerGroup(GroupSpec(("cpu",), **{name: 0}))


def test_the_first_job_waits_for_the_ranks_background_imports():
    """Two threads importing one package at once can see half-initialised modules (seen as
    "cannot import name ... from partially initialized module 'scipy...'"), so a rank finishes
    the imports its init hook started (group.preload) before it unpickles its first job."""
    g = WorkerGroup(GroupSpec(("cpu", "cpu"), worker_init="support.group_jobs:slow_preload_init"))
    try:
        g.start()
        assert g.run(PreloadSeenJob()).value == ["done"]
    finally:
        g.teardown()
