"""The worker group with real processes (gloo on the CPU): exactness, faults, interrupts, cleanup."""
import os
import signal
import time

import pytest
import torch

from cfg_runtime.errors import GroupConfigError, JobFailedError, JobInterrupted, WorkerDiedError
from cfg_runtime.group import GroupSpec, WorkerGroup, current_group, get_group, prestart, shutdown_group
from cfg_runtime.guidance.ltx import ModalityGuidance
from cfg_runtime.guidance.policy import CFGBranch, CFGPolicy, WeightedBranches
from cfg_runtime.guidance.presets import ltx2_multimodal, standard_cfg
from support.toy import ToyFaults, ToySampleJob, run_serial
from support.sockets import is_loopback, listening_sockets, pid_alive

LTX_TOY = ltx2_multimodal(
    ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(1,), modality=3.0, rescale=0.7, skip_step=0),
    ModalityGuidance(cfg=7.0, stg=1.0, stg_blocks=(1,), modality=3.0, rescale=0.7, skip_step=0))
LTX_SKIP = ltx2_multimodal(
    ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(0,), modality=3.0, rescale=0.7, skip_step=1),
    ModalityGuidance(cfg=7.0, stg=1.0, stg_blocks=(0,), modality=3.0, rescale=0.7, skip_step=1))


def wait_for(condition, timeout: float, poll: float = 0.01) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def n_branch_custom(n):
    """cond plus n-1 weighted branches, alternating conditioning and perturbation."""
    extra = [CFGBranch(f"b{i}", "negative" if i % 2 else "positive", perturb_blocks=(i % 3,)) for i in range(1, n)]
    return CFGPolicy(f"custom{n}", (CFGBranch("cond"),) + tuple(extra),
                     WeightedBranches(tuple((b.name, 0.5 + i) for i, b in enumerate(extra))))


POLICIES = {
    "cfg1": standard_cfg(1.0),
    "cfg": standard_cfg(4.5),
    "cfg_rescale_zero_star": standard_cfg(3.0, rescale=0.7, cfg_zero_star=True, zero_init_steps=1),
    "custom3": n_branch_custom(3),
    "custom4": n_branch_custom(4),
    "ltx2": LTX_TOY,
    "ltx2_skip_step": LTX_SKIP,
}


@pytest.fixture(scope="module", params=[2, 3, 4], ids=lambda n: f"{n}ranks")
def group(request):
    g = WorkerGroup(GroupSpec(("cpu",) * request.param, step_timeout_s=60, start_timeout_s=120))
    g.start()
    yield g
    g.teardown()


@pytest.mark.parametrize("strategy", ["cost_balanced", "round_robin"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_parallel_equals_serial_bit_for_bit(group, name, strategy):
    job = ToySampleJob(POLICIES[name], steps=4, batch=2, strategy=strategy)
    serial, serial_summary = run_serial(job)
    result = group.run(job)
    assert torch.equal(result.value, serial), f"{name} on {group.spec.world_size} ranks differs from serial"
    # every branch ran exactly as often as in the serial run, spread over the ranks
    total: dict = {}
    for s in result.summaries:
        for branch, count in s["forwards"].items():
            total[branch] = total.get(branch, 0) + count
    assert total == serial_summary["forwards"]
    # idle ranks ran no forward at all
    n_branches = len(POLICIES[name].branches)
    for rank, s in enumerate(result.summaries):
        if rank >= n_branches:
            assert s["forwards"] == {} and s["idle_evaluations"] == s["evaluations"]


def test_persistent_cache_and_progress(group):
    job = ToySampleJob(POLICIES["cfg"], steps=3, seed=11)
    events = []
    first = group.run(job, on_progress=events.append)
    second = group.run(job)
    assert torch.equal(first.value, second.value)
    assert [e["step"] for e in events] == [1, 2, 3]
    assert all(s["model_loads"] == first.summaries[0]["model_loads"] for s in second.summaries)


def test_rendezvous_is_loopback_only(group):
    socks = listening_sockets(group.pids())
    assert all(is_loopback(s) for s in socks), socks


def test_job_errors_keep_the_group_usable(group):
    pol = POLICIES["custom4"]
    with pytest.raises(JobFailedError, match="PredictionError.*Branch 'b2' produced NaN"):
        group.run(ToySampleJob(pol, faults=ToyFaults(nan_branch="b2", at_step=1)))
    with pytest.raises(JobFailedError, match="injected failure on rank 1"):
        group.run(ToySampleJob(pol, faults=ToyFaults(raise_on_rank=1, at_step=2)))
    with pytest.raises(JobFailedError, match="Branch 'b3' returned a prediction of shape"):
        group.run(ToySampleJob(pol, faults=ToyFaults(bad_shape_branch="b3", at_step=0)))
    assert group.alive()
    job = ToySampleJob(pol)
    assert torch.equal(group.run(job).value, run_serial(job)[0])


def test_interrupt_stops_every_rank_at_the_same_step(group):
    job = ToySampleJob(POLICIES["custom4"], steps=50, sleep_per_forward_s=0.02)
    seen = []
    with pytest.raises(JobInterrupted) as info:
        group.run(job, on_progress=seen.append, interrupt_requested=lambda: len(seen) >= 3)
    assert info.value.step is not None and 3 <= info.value.step < 50
    assert group.alive()
    assert torch.equal(group.run(ToySampleJob(POLICIES["cfg"])).value, run_serial(ToySampleJob(POLICIES["cfg"]))[0])


def test_killed_worker_fails_the_job_quickly_and_the_next_job_respawns():
    spec = GroupSpec(("cpu", "cpu"), step_timeout_s=30)
    g = get_group(spec)
    victim = g.ranks[1].process.pid
    job = ToySampleJob(POLICIES["cfg"], steps=200, sleep_per_forward_s=0.02)

    def kill_after_progress(payload):
        if payload["step"] == 3:
            os.kill(victim, signal.SIGKILL)

    t0 = time.monotonic()
    with pytest.raises(WorkerDiedError, match="rank 1 .* was killed by signal 9"):
        g.run(job, on_progress=kill_after_progress)
    assert time.monotonic() - t0 < 30
    old_pids = g.pids()
    assert wait_for(lambda: not any(pid_alive(p) for p in old_pids), 5.0), "the surviving rank must be torn down too"
    g2 = get_group(spec)
    assert g2 is not g
    small = ToySampleJob(POLICIES["cfg"], steps=3)
    assert torch.equal(g2.run(small).value, run_serial(small)[0])
    shutdown_group()
    assert not any(pid_alive(p) for p in g2.pids())


def test_prestart_spawns_without_waiting_and_get_group_takes_that_group():
    """A node that will sample on the group starts it early (CFG Parallel, Multi-Branch Guider):
    prestart returns while the ranks start; the sampler's get_group waits for that very group."""
    shutdown_group()
    spec = GroupSpec(("cpu", "cpu"))
    assert prestart(spec) is True
    spawned = current_group()
    assert spawned.state == "starting"  # spawned, not waited for (only get_group / await_ready wait)
    assert prestart(spec) is False and current_group() is spawned  # already starting: kept
    g = get_group(spec)
    assert g is spawned and g.alive()
    assert prestart(spec) is False and current_group() is g  # running: kept
    small = ToySampleJob(POLICIES["cfg"], steps=2)
    assert torch.equal(g.run(small).value, run_serial(small)[0])
    shutdown_group()


def test_worker_dying_while_idle_is_replaced():
    spec = GroupSpec(("cpu", "cpu"))
    g = get_group(spec)
    os.kill(g.ranks[0].process.pid, signal.SIGKILL)
    g.ranks[0].process.join(5)
    g2 = get_group(spec)
    assert g2 is not g and g2.alive()
    shutdown_group()


def test_shutdown_leaves_no_process_and_no_socket():
    g = WorkerGroup(GroupSpec(("cpu", "cpu")))
    g.start()
    pids = g.pids()
    assert listening_sockets(pids) == []  # gloo's port closes once the mesh is connected ...
    g.teardown()
    assert not any(pid_alive(p) for p in pids)
    assert listening_sockets(pids) == []  # ... and nothing is left afterwards
    assert g.status()["state"] == "closed"


def test_a_leaking_gloo_port_is_detected_and_the_group_respawned(monkeypatch):
    """With gloo's port left open (CFG_PARALLEL_KEEP_GLOO_LISTENER=1), connect-and-close leaks one
    fd per connection in the rank; get_group notices between jobs and respawns the group."""
    import socket

    from cfg_runtime.group.worker import KEEP_LISTENER_ENV

    monkeypatch.setenv(KEEP_LISTENER_ENV, "1")
    shutdown_group()
    spec = GroupSpec(("cpu", "cpu"), fd_margin=200)
    g = get_group(spec)
    g.run(ToySampleJob(POLICIES["cfg"], steps=2))
    victim = g.ranks[1].process.pid
    port = int(listening_sockets([victim])[0].rsplit(":", 1)[1])
    before = len(os.listdir(f"/proc/{victim}/fd"))
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    # the leak this guards against (the rank accepts the connections on its own thread)
    assert wait_for(lambda: len(os.listdir(f"/proc/{victim}/fd")) - before >= 250, 10.0)
    g2 = get_group(spec)
    assert g2 is not g and not pid_alive(victim) and "open fds" in g.last_error
    monkeypatch.delenv(KEEP_LISTENER_ENV)
    shutdown_group()


def test_gloo_port_is_closed_after_the_rendezvous():
    import socket

    g = WorkerGroup(GroupSpec(("cpu", "cpu", "cpu")))
    g.start()
    try:
        assert all(r.ready.gloo_listener_closed for r in g.ranks)
        assert listening_sockets(g.pids()) == []
        job = ToySampleJob(POLICIES["custom3"], steps=3)
        assert torch.equal(g.run(job).value, run_serial(job)[0])
    finally:
        g.teardown()


def test_bad_group_requests():
    with pytest.raises(GroupConfigError):
        WorkerGroup(GroupSpec(()))


def test_stale_rendezvous_folders_of_dead_owners_are_swept(tmp_path, monkeypatch):
    import subprocess
    import tempfile

    from cfg_runtime.group import host as group_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{group_module.STORE_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{group_module.STORE_PREFIX}{os.getpid()}-def"
    foreign = tmp_path / f"{group_module.STORE_PREFIX}legacy"
    for d in (stale, live, foreign):
        d.mkdir()
    group_module.sweep_stale_stores()
    assert not stale.exists() and live.exists() and foreign.exists()
