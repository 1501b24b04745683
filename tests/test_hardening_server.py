"""Hardening from an adversarial run (issue 14), through a real ComfyUI server.

Inputs that slipped through, cancel during group start and model load, leftovers of
killed processes, a rank's gloo port, and more faults (OOM, a rank raising once, a rank
lost with prompts queued, an unusable temp folder). Each test failed before its fix.
Figures are printed (``pytest -s``) and written to ``test-artifacts/hardening_server.json``.
"""
from __future__ import annotations

import math
import os
import signal
import stat
import time

import pytest

from devkit.comfy_server import ComfyServer, execution_error
from support.demo_prompts import GUIDER, POLICY, SAMPLER, Progress, demo_graph, failing, history_messages, warm_group
from support.figures import Figures
from support.processes import Throttle, fd_count, worker_pids
from support.tiny_ltx2 import ltx2_sampler_graph

pytestmark = pytest.mark.server

FIGURES = Figures("hardening", __file__)
record = FIGURES.record
_write_figures = FIGURES.fixture()


def custom_graph(size: int, branches: str, steps: int = 3, **guider) -> dict:
    g = demo_graph(steps=steps, parallel_size=size, **guider)
    g[POLICY]["inputs"].update({"preset": "custom", "custom_branches": branches})
    return g


# === 3. inputs that slipped through ======================================================
def test_custom_line_named_cond_is_refused(comfy_server):
    err = failing(comfy_server, custom_graph(1, "negative:negative:2.0\ncond:positive:1.5"))
    record("custom_cond_line", err["exception_message"])
    assert err["node_id"] == POLICY and err["exception_type"].endswith("PolicyError"), err
    assert "'cond' is the conditional branch" in err["exception_message"] and "cond2" in err["exception_message"]


@pytest.mark.parametrize("size", [1, 2])
def test_huge_custom_weight_fails_blaming_the_combine(comfy_server, size):
    err = failing(comfy_server, custom_graph(size, "negative:negative:1e300", steps=4))
    msg = err["exception_message"]
    record(f"huge_weight_size{size}", [err["exception_type"], msg])
    assert err["node_id"] == SAMPLER, err
    assert "guided prediction" in msg and "at step 0" in msg and "weight of 'negative' = 1e+300" in msg, msg
    assert "Branch 'cond'" not in msg, "a finite branch is blamed for the combine's overflow"


@pytest.mark.parametrize("size", [1, 2])
def test_device_text_is_checked_and_clipped(comfy_server, size):
    pids = worker_pids(comfy_server.pid)
    cases = {"superscript": "cuda:\u00b2", "long": "cpu," * 33_000 + "cpu", "garbage": "x" * 100_000}
    out = {}
    for name, devices in cases.items():
        err = failing(comfy_server, demo_graph(steps=2, parallel_size=size, devices=devices))
        out[name] = err["exception_message"]
        assert err["node_id"] == GUIDER and err["exception_type"].endswith("GroupConfigError"), err
        assert len(err["exception_message"]) < 400, len(err["exception_message"])
    record(f"devices_size{size}", out)
    assert "cuda:N" in out["superscript"] and "ValueError" not in out["superscript"]
    assert "(100000 characters)" in out["garbage"]
    assert worker_pids(comfy_server.pid) == pids, "a bad devices value started or restarted a group"


def test_nan_step_timeout_is_refused_at_size_one(comfy_server):
    err = failing(comfy_server, demo_graph(steps=2, parallel_size=1, step_timeout_s=float("nan")))
    assert err["node_id"] == GUIDER and "step_timeout_s" in err["exception_message"], err


def test_gpu_listed_twice_is_refused_saying_how_to_use_gloo(comfy_server):
    pids = worker_pids(comfy_server.pid)
    t0 = time.monotonic()
    err = failing(comfy_server, demo_graph(steps=2, parallel_size=2, devices="cuda:0,cuda:0"))
    msg = err["exception_message"]
    record("gpu_twice", {"seconds": round(time.monotonic() - t0, 2), "message": msg})
    assert err["node_id"] == GUIDER and "listed more than once" in msg and "gloo" in msg, msg
    assert "CFG_PARALLEL_BACKEND=gloo" in msg
    assert worker_pids(comfy_server.pid) == pids


@pytest.mark.parametrize("sigmas", ["nan, 0.0", "inf, 0.5, 0.0", "0.9, -inf"])
def test_stage2_sigmas_must_be_finite(comfy_server, sigmas):
    g = ltx2_sampler_graph("tiny_ltxv.safetensors", channels=32, video_modality=1.0, audio_modality=1.0,
                           stage2_sigmas=sigmas, nonce=int(time.time()))
    err = failing(comfy_server, g)
    assert err["node_type"] == "LTX2Sampler" and "finite" in err["exception_message"], err


def _mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return math.inf


def test_sixty_four_cpu_ranks_are_refused_before_any_starts(comfy_server):
    if _mem_available_mib() > 64 * 800:
        pytest.skip("this host has room for 64 CPU ranks")
    pids = worker_pids(comfy_server.pid)
    t0 = time.monotonic()
    fds = fd_count(comfy_server.pid)
    err = failing(comfy_server, demo_graph(steps=2, parallel_size=64, devices="cpu"))
    seconds = time.monotonic() - t0
    msg = err["exception_message"]
    record("sixty_four_ranks", {"seconds": round(seconds, 2), "message": msg})
    assert err["exception_type"].endswith("GroupConfigError") and "host memory" in msg, err
    assert "Lower the parallel size" in msg
    # refused before anything started, and the running group (if any) was kept
    assert seconds < 10 and worker_pids(comfy_server.pid) == pids
    assert fd_count(comfy_server.pid) <= fds + 4


# === 2. cancel during group start and model load =========================================
def _wait_log(server, text: str, mark: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text()[mark:]:
        assert time.monotonic() < deadline and server.alive(), server.log_tail()
        time.sleep(0.02)


def _wait_for(condition, server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline and server.alive(), server.log_tail()
        time.sleep(0.02)


def _interrupt_and_time(server, prompt_id: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    server.interrupt()
    entry = server.wait(prompt_id, timeout=300, poll=0.02)
    return time.monotonic() - t0, entry


def test_cancel_during_group_start_and_model_load_is_prompt_and_keeps_the_group(comfy_server):
    comfy_server.run({"1": {"class_type": "CFGParallelGroupStatus", "inputs": {"shutdown": True}}}, timeout=60)
    progress = Progress(comfy_server)
    try:
        # 1. cancel while the ranks start (import torch and ComfyUI, join the group)
        mark = len(comfy_server.log_text())
        first = comfy_server.queue(demo_graph(steps=3), client_id=progress.client_id)
        _wait_log(comfy_server, "cfg-parallel: starting 2 rank(s)", mark)
        _wait_for(lambda: len(worker_pids(comfy_server.pid)) == 2, comfy_server)  # both ranks spawned
        # the ranks start as the prompt is queued (queue_start.py): cancel once its sampler waits for them
        progress.wait_executing(first, SAMPLER)
        start_cancel_s, entry = _interrupt_and_time(comfy_server, first)
        assert history_messages(entry, "execution_interrupted"), entry["status"]
        assert "cfg-parallel group ready" not in comfy_server.log_text()[mark:], "cancelled too late to test"
        starting = worker_pids(comfy_server.pid)
        assert len(starting) == 2, "the starting ranks were thrown away"
        # 2. cancel while the ranks load the model (at ~1/10 speed, so the load takes seconds)
        second = comfy_server.queue(demo_graph(steps=3), client_id=progress.client_id)
        _wait_log(comfy_server, "cfg-parallel group ready", mark)
        with Throttle(starting):
            time.sleep(0.5)
            assert not progress.steps(second), "the load was over before the cancel"
            load_cancel_s, entry = _interrupt_and_time(comfy_server, second)
        assert history_messages(entry, "execution_interrupted"), entry["status"]
        assert not progress.steps(second)
        # 3. the next prompt runs on the same ranks, with the model the cancelled load brought
        t0 = time.monotonic()
        entry = comfy_server.run(demo_graph(steps=3), timeout=300)
        next_s = time.monotonic() - t0
    finally:
        progress.close()
    per_rank = comfy_server.group_status()["last_job"]["per_rank"]
    record("cancel_start_load", {"cancel_during_start_s": round(start_cancel_s, 2),
                                 "cancel_during_load_s": round(load_cancel_s, 2), "next_prompt_s": round(next_s, 2),
                                 "next_prompt_reloaded": [r["model_reloaded"] for r in per_rank]})
    # The aim is "within a second" (0.25 s of it is the wait for ranks that stop at once); the bound
    # leaves room for a loaded 2-core CI host, where ComfyUI's own process answers late (the 1.9 s
    # measured at load 12 included the parent's shipping of the model to the ranks).
    assert start_cancel_s < 3.0 and load_cancel_s < 3.0, (start_cancel_s, load_cancel_s)
    assert worker_pids(comfy_server.pid) == starting, "the group was torn down"
    assert not any(r["model_reloaded"] for r in per_rank), "the next prompt loaded the model again"


# === 4. leftovers of killed ranks and a killed server ====================================
def _bound_unix() -> set[str]:
    with open("/proc/net/unix") as f:
        return {c[7] for c in (ln.split() for ln in f.readlines()[1:]) if len(c) >= 8}


def _stale_sockets(root) -> list[str]:
    """Socket files under `root` that no process has bound (leftovers of dead processes)."""
    bound = _bound_unix()
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode) and path not in bound:
                    out.append(os.path.relpath(path, root))
            except OSError:
                pass
    return sorted(out)


def _temp_folders(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(("pymp-", "cfgp-")))


def test_killed_rank_and_server_leave_nothing_in_the_temp_folder(tiny_ltxv_path, tmp_path):
    """A rank SIGKILLed mid-prompt with prompts queued (they run on a respawned group), then the
    server SIGKILLed, then the temp folder made unusable: nothing left behind, clear errors."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    models = {"diffusion_models/tiny_ltxv.safetensors": tiny_ltxv_path}
    first = ComfyServer(models=models, env={"TMPDIR": str(tmp)})
    second = ComfyServer(models=models, env={"TMPDIR": str(tmp)})
    try:
        first.start(wait=False)
        second.start(wait=False)  # its start-up overlaps the first server's work
        first.wait_ready()
        # 5. a rank lost while the queue holds more prompts (this kill is also the leftover's source)
        pids = warm_group(first)
        progress = Progress(first)
        try:
            long_id = first.queue(demo_graph(steps=400), client_id=progress.client_id)
            queued = [first.queue(demo_graph(steps=3)) for _ in range(2)]
            progress.wait_step(long_id, 3)
            t0 = time.monotonic()
            os.kill(pids[1], signal.SIGKILL)
            entries = [first.wait(p, timeout=300) for p in [long_id] + queued]
            queue_s = time.monotonic() - t0
        finally:
            progress.close()
        statuses = [e["status"]["status_str"] for e in entries]
        new_pids = worker_pids(first.pid)
        stale_after_rank_kills = _stale_sockets(tmp)
        ranks = worker_pids(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{p}") for p in ranks) and time.monotonic() < deadline:
            time.sleep(0.05)
        second_pid = second.pid  # the second server's own folder (its warm fork server's, where that runs) is live
        left_by_killed_server = [d for d in _temp_folders(tmp) if f"-{second_pid}-" not in d]
        second.wait_ready()
        second.run(demo_graph(steps=2), timeout=300)  # its group start sweeps what the first one left
        mine = set(_temp_folders(tmp))
        left_after_sweep = [d for d in left_by_killed_server if d in mine]
        stale_after_sweep = _stale_sockets(tmp)
        # 5. the temp folder becomes unusable (removed, a file in its place) before a group start
        second.run({"1": {"class_type": "CFGParallelGroupStatus", "inputs": {"shutdown": True}}}, timeout=60)
        aside = tmp.with_name("tmp-aside")
        tmp.rename(aside)
        tmp.write_text("not a folder")
        try:
            t0 = time.monotonic()
            err = failing(second, demo_graph(steps=2))
            unusable_s = time.monotonic() - t0
            spawned = worker_pids(second.pid)
        finally:
            tmp.unlink()
            aside.rename(tmp)
    finally:
        first.stop()
        second.stop()
    record("rank_lost_with_queue", {"statuses": statuses, "seconds_until_queue_done": round(queue_s, 1),
                                    "old_pids": pids, "new_pids": new_pids})
    assert statuses == ["error", "success", "success"], statuses
    assert execution_error(entries[0])["exception_type"].endswith("WorkerDiedError")
    assert len(new_pids) == 2 and not set(new_pids) & set(pids)
    record("leftovers", {"stale_sockets_after_rank_kill": stale_after_rank_kills,
                         "folders_after_server_sigkill": left_by_killed_server,
                         "folders_left_after_next_start": left_after_sweep,
                         "stale_sockets_after_next_start": stale_after_sweep,
                         "unusable_temp_folder": {"seconds": round(unusable_s, 2), "message": err["exception_message"]}})
    assert err["exception_type"].endswith("GroupStartError") and "rendezvous folder" in err["exception_message"], err
    assert "TMPDIR" in err["exception_message"] and unusable_s < 10 and spawned == [], (err, spawned)
    assert stale_after_rank_kills == [], "killed ranks left their sockets behind"
    assert left_after_sweep == [] and stale_after_sweep == [], (left_after_sweep, stale_after_sweep)


# === 1. a rank's gloo port ===============================================================
def test_rank_gloo_ports_are_closed_after_the_rendezvous(comfy_server):
    import socket

    from support.sockets import established_peers, listening_sockets

    pids = warm_group(comfy_server)
    listen = listening_sockets(pids)
    before = [fd_count(p) for p in pids]
    refused = 0
    for port in _rank_ports_seen(pids):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            refused += 1
    comfy_server.run(demo_graph(steps=2), timeout=300)
    after = [fd_count(p) for p in pids]
    record("gloo_port", {"rank_listen": listen, "rank_peers": established_peers(pids), "fds_before": before,
                         "fds_after": after, "connects_refused": refused})
    assert listen == [], f"a rank still listens on {listen}"
    assert worker_pids(comfy_server.pid) == pids
    assert all(b - a <= 2 for a, b in zip(before, after)), (before, after)


def _rank_ports_seen(pids) -> list[int]:
    """Local ports of the ranks' connected gloo pairs (the ports a scan would find)."""
    from support.sockets import _tcp_entries

    return sorted({int(local.rsplit(":", 1)[1]) for _, local, _ in _tcp_entries(pids)})


# === 5. more faults ======================================================================
def failing_model_graph(kind: str, call: int, tag: str, steps: int = 4) -> dict:
    g = demo_graph(steps=steps)
    g["90"] = {"class_type": "CFGPTestFailingModel", "inputs": {"model": g[GUIDER]["inputs"]["model"], "kind": kind,
                                                                 "rank": 1, "call": call, "tag": tag}}
    g[GUIDER]["inputs"]["model"] = ["90", 0]
    return g


@pytest.mark.parametrize("kind", ["oom", "raise"])
def test_rank_failing_inside_the_model_on_one_step_keeps_the_group(comfy_server, kind):
    pids = warm_group(comfy_server)
    t0 = time.monotonic()
    err = failing(comfy_server, failing_model_graph(kind, call=1, tag=f"{kind}-{time.time()}"))
    fail_s = time.monotonic() - t0
    msg = err["exception_message"]
    t1 = time.monotonic()
    comfy_server.run(demo_graph(steps=2), timeout=300)
    record(f"model_fault_{kind}", {"fail_s": round(fail_s, 2), "message": msg[:300],
                                   "next_prompt_s": round(time.monotonic() - t1, 2)})
    assert err["node_id"] == SAMPLER and err["exception_type"].endswith("JobFailedError"), err
    if kind == "oom":
        assert msg.startswith("Rank 1 ran out of memory") and "lower the resolution" in msg, msg
    else:
        assert "injected model failure on rank 1 at model call 1" in msg, msg
    assert worker_pids(comfy_server.pid) == pids, "a failure inside the model restarted the group"
