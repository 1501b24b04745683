"""Faults, load and bad input through a real ComfyUI server (issue 7).

Every test drives a real ComfyUI 0.3.75 with the pack loaded and the worker group at
size 2 (gloo on CPU ranks):

- a rank SIGKILLed mid-prompt fails that prompt quickly with a message that says so, and
  the next prompt respawns the group;
- /interrupt mid-prompt stops every rank at the same step, without a respawn;
- 50 prompts queued back to back all succeed while RSS, open fds and the process count
  stay flat;
- SIGTERM / SIGKILL of the ComfyUI process leaves no worker behind;
- the ranks listen on 127.0.0.1 only, and two servers with groups run at the same time;
- fuzzed node inputs end in a 400 with node errors, a success, or a readable error.

Tests that stop or kill a server use their own servers (``server_pair``); the others use
the session's shared ``comfy_server``. Measured figures are printed (``pytest -s``) and
written to ``test-artifacts/faults_server.json``. The last five tests pin down bugs this
file found (interrupt race, load time vs step timeout, NaN timeout, fds of a dead rank,
rendezvous folder of a killed server); all are fixed.
"""
from __future__ import annotations

import os
import signal
import statistics
import time

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from devkit.comfy_server import ComfyServer, execution_error
from support.demo_prompts import (DEVICES, GUIDER, POLICY, POSITIVE, SAMPLER, STEP_TIMEOUT, Progress, demo_graph,
                                  history_messages, post_raw, warm_group)
from support.figures import Figures
from support.processes import (Throttle, cmdline, cpu_seconds, descendants, fd_count, pending_fd_dups, snapshot,
                               wait_dead, worker_pids)
from support.sockets import established_peers, is_loopback, listening_sockets, pid_alive

pytestmark = pytest.mark.server

FIGURES = Figures("faults", __file__)
record = FIGURES.record
_write_figures = FIGURES.fixture()


def check_alive(server) -> None:
    """The server still answers (no crash, no hang)."""
    assert server.alive(), server.log_tail()
    stats = server.session.get(server.url + "/system_stats", timeout=10)
    assert stats.status_code == 200


# === shared-server tests ==================================================================
@pytest.mark.slow
def test_ranks_listen_on_loopback_only(comfy_server):
    pids = warm_group(comfy_server)
    server_listen = listening_sockets([comfy_server.pid])
    rank_listen = listening_sockets(pids)
    peers = established_peers(pids)
    record("loopback", {"server_listen": server_listen, "rank_listen": rank_listen, "rank_peers": peers})
    assert server_listen == [f"127.0.0.1:{comfy_server.port}"], "the pack opened a socket in the ComfyUI process"
    # gloo's port is closed once the ranks' full mesh is connected (issue 14): nothing listens
    assert rank_listen == [], f"a rank still listens: {rank_listen}"
    assert peers, "the ranks should be connected to each other"
    assert all(is_loopback(a) for a in rank_listen), rank_listen
    assert all(is_loopback(a) for a in peers), peers
    assert not {a.rsplit(":", 1)[1] for a in rank_listen} & {"29500"}, "a fixed default port is in use"


def _interrupt_round(server, progress: Progress, pids: list[int], steps: int) -> dict:
    """Interrupt a running prompt; report how the ranks and the next prompt behave."""
    prompt_id = server.queue(demo_graph(steps=steps), client_id=progress.client_id)
    progress.wait_step(prompt_id, 4)
    # Aim the interrupt just before rank 0's next step report, when the ComfyUI process is
    # waiting for it: the moment a real user's click most often lands.
    times = [t for t, d in progress.events if d.get("prompt_id") == prompt_id]
    step_s = statistics.median(b - a for a, b in zip(times, times[1:]))
    time.sleep(max(0.0, step_s - 0.015 - (time.monotonic() - times[-1])))
    before = max(progress.steps(prompt_id))
    t0 = time.monotonic()
    server.interrupt()
    entry = server.wait(prompt_id, timeout=60)
    latency = time.monotonic() - t0
    after = progress.steps(prompt_id, after=t0)
    interrupted = history_messages(entry, "execution_interrupted")
    time.sleep(0.2)
    c0 = {p: cpu_seconds(p) for p in pids}
    time.sleep(0.5)
    busy = {p: round(cpu_seconds(p) - c0[p], 3) for p in pids}
    t1 = time.monotonic()
    nxt = server.queue(demo_graph(steps=2), client_id=progress.client_id)
    nxt_entry = server.wait(nxt, timeout=120)
    return {"interrupted": bool(interrupted and interrupted[0]["node_id"] == SAMPLER), "step_s": round(step_s, 3),
            "step_at_interrupt": before, "steps_reported_after": len(after), "stop_latency_s": round(latency, 3),
            "rank_cpu_s_in_0.5s_after": busy, "next_prompt_s": round(time.monotonic() - t1, 2),
            "next_prompt_status": nxt_entry["status"]["status_str"],
            "next_prompt_progress_events": len(progress.steps(nxt)), "pids_after": worker_pids(server.pid)}


@pytest.mark.slow
def test_interrupt_mid_prompt_stops_every_rank_at_once(comfy_server):
    pids = warm_group(comfy_server)
    progress = Progress(comfy_server)
    rounds = []
    try:
        # The fault is a race (it shows in ~1 of 3 unaimed interrupts on a loaded 2-core host,
        # ~7 of 10 aimed ones): several short rounds make a pass meaningful.
        for _ in range(6):
            rounds.append(_interrupt_round(comfy_server, progress, pids, steps=30))
    finally:
        progress.close()
        record("interrupt", rounds)
    for r in rounds:
        assert r["interrupted"], r
        # Rank 0 decides the stop and shares it in the step's exchange, so every rank leaves at
        # the same step: at most the step in flight is reported after the interrupt.
        assert r["steps_reported_after"] <= 2, r
        assert r["stop_latency_s"] < 5.0, r
        # Both ranks idle after the prompt ended: neither still steps or waits in a collective.
        assert all(v < 0.05 for v in r["rank_cpu_s_in_0.5s_after"].values()), f"a rank kept working: {r}"
        # The next prompt runs on the same ranks (none was left behind) and sees only its own steps.
        assert r["next_prompt_status"] == "success" and r["pids_after"] == sorted(pids), r
        assert r["next_prompt_progress_events"] <= 2, f"the next prompt got the interrupted job's progress: {r}"


@pytest.mark.slow
def test_fifty_prompts_back_to_back_stay_flat(comfy_server):
    pids = warm_group(comfy_server)
    for _ in range(2):  # settle allocator pools and ComfyUI's caches before the baseline
        comfy_server.run(demo_graph(steps=3), timeout=120)
    first = snapshot(comfy_server.pid)
    t0 = time.monotonic()
    ids = [comfy_server.queue(demo_graph(steps=3)) for _ in range(50)]
    peak = {"rss_mib_total": first["rss_mib_total"], "fds_total": first["fds_total"], "processes": first["processes"]}
    pending = list(ids)
    entries = {}
    while pending:
        s = snapshot(comfy_server.pid)
        for k in peak:
            peak[k] = max(peak[k], s[k])
        for pid in list(pending):
            e = comfy_server.history(pid)
            if e is not None and (e.get("status") or {}).get("status_str") in ("success", "error"):
                entries[pid] = e
                pending.remove(pid)
        assert time.monotonic() - t0 < 300, f"{len(pending)} prompts still pending after 300 s"
        time.sleep(0.25)
    seconds = time.monotonic() - t0
    time.sleep(0.5)
    last = snapshot(comfy_server.pid)
    statuses = [entries[i]["status"]["status_str"] for i in ids]
    deltas = {}
    for p in sorted(set(first["per_pid"]) | set(last["per_pid"])):
        a, b = first["per_pid"].get(p), last["per_pid"].get(p)
        deltas[p] = {"cmd": "server" if p == comfy_server.pid else
                     ("rank" if "spawn_main" in cmdline(p) else cmdline(p)[:60]),
                     "first": a, "last": b}
    record("soak_50", {"seconds": round(seconds, 1), "per_prompt_s": round(seconds / 50, 3),
                       "all_success": statuses.count("success"),
                       "first": {k: first[k] for k in ("processes", "rss_mib_total", "fds_total")},
                       "last": {k: last[k] for k in ("processes", "rss_mib_total", "fds_total")},
                       "peak_during": peak, "per_process": deltas})
    assert statuses.count("success") == 50, [execution_error(entries[i]) for i in ids if
                                             entries[i]["status"]["status_str"] != "success"][:3]
    # Same processes before and after: no respawn, no extra or leftover process.
    assert set(first["per_pid"]) == set(last["per_pid"]), (first["per_pid"], last["per_pid"])
    assert worker_pids(comfy_server.pid) == sorted(pids)
    for p, a in first["per_pid"].items():
        b = last["per_pid"][p]
        # RSS: a leak of anything model- or group-sized per prompt (>= ~0.6 MiB/prompt) would
        # exceed 32 MiB over 50 prompts; measured drift here is a few MiB (allocator pools,
        # ComfyUI's in-memory history of 50 entries).
        assert b["rss_mib"] - a["rss_mib"] <= 32, (p, a, b)
        # fds: the ranks hold exactly the same; the server may have a few transient sockets
        # (HTTP keep-alive, the multiprocessing resource sharer's connection).
        assert b["fds"] - a["fds"] <= (6 if p == comfy_server.pid else 2), (p, a, b)
        assert b["threads"] - a["threads"] <= 4, (p, a, b)


# --- fuzzing ----------------------------------------------------------------------------
def _cpu_devices(text) -> bool:
    if not isinstance(text, str):
        return False
    names = [d.strip().lower() for d in text.replace(";", ",").split(",") if d.strip()]
    return all(n in ("cpu", "auto") for n in names)


def _as_int(v):
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return None


NASTY_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([-1.0, 0.0, 1.0, 3.0, 100.0, 100.0001, 1e308, "nan", "inf", "-inf", "1e309", "abc", "", None]))
BLOCKS = st.one_of(st.sampled_from(["1", "0", "0,1", "29", "-1", "a,b", "1;;1", " 1 , 0 ", "99999999999999999999",
                                    "", "1.5", "0x1", "\u0661"]), st.text(max_size=12))
CUSTOM = st.one_of(st.sampled_from(["negative:negative:2.0", "a:negative:1\nb:positive:0.5", "::::", "a:foo:1",
                                    "a:negative:nan", "a:negative:inf", "a:negative:1\na:negative:2",
                                    "cond:positive:1", "# only a comment", "", "x" * 5000,
                                    "a:negative:1e400", "a:negative:-0"]), st.text(max_size=40))
DEVICES_ST = st.one_of(st.sampled_from(["", "cpu", "cpu,cpu", "cpu,cpu,cpu", "cuda:7", "cuda:0,cuda:1", "tpu",
                                        "cuda", "auto", " CPU ; cpu ", "cpu,cuda:0", "mps", "cuda:-1", ",,,"]),
                       st.text(max_size=20))

FIELDS = {
    "parallel_size": st.one_of(st.integers(-5, 100), st.sampled_from(["2", "abc", 2.5, None, 1e10, True])),
    "devices": st.one_of(DEVICES_ST, st.sampled_from([None, 7])),
    "plan": st.sampled_from(["cost_balanced", "round_robin", "bogus", "", 3]),
    "keep_model_loaded": st.sampled_from([True, False, "maybe", 0, None]),
    # Only invalid values or the group's own value: another valid timeout is a different
    # group spec (a respawn, ~20-30 s each on 2 cores). NaN has its own test below.
    "step_timeout_s": st.sampled_from([STEP_TIMEOUT, str(STEP_TIMEOUT), 4.9, -1, 0, 1e9, "abc", "inf", None]),
    "preset": st.sampled_from(["standard_cfg", "ltx2_multimodal", "custom", "bogus"]),
    "cfg": NASTY_FLOATS,
    "guidance_rescale": NASTY_FLOATS,
    "cfg_zero_star": st.sampled_from([True, False, "yes"]),
    "zero_init_steps": st.one_of(st.integers(-3, 200), st.just("x")),
    "video_cfg": NASTY_FLOATS,
    "video_stg": NASTY_FLOATS,
    "video_stg_blocks": BLOCKS,
    "video_modality": NASTY_FLOATS,
    "video_rescale": NASTY_FLOATS,
    "video_skip_step": st.integers(-5, 200),
    "audio_cfg": NASTY_FLOATS,
    "audio_stg_blocks": BLOCKS,
    "audio_skip_step": st.integers(-5, 200),
    "custom_branches": CUSTOM,
    "drop": st.sampled_from(["policy", "positive", "negative", "parallel_size", "devices", "custom_branches"]),
    "policy_link": st.sampled_from([[POSITIVE, 0], [POLICY, 1], ["99", 0], "x", [], None]),
}
BASE_CASE = {"parallel_size": 2, "devices": DEVICES, "plan": "cost_balanced", "keep_model_loaded": True,
             "step_timeout_s": STEP_TIMEOUT, "preset": "ltx2_multimodal", "cfg": 3.0, "guidance_rescale": 0.0,
             "cfg_zero_star": False, "zero_init_steps": 0, "video_cfg": 3.0, "video_stg": 1.0,
             "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7, "video_skip_step": 0,
             "audio_cfg": 3.0, "audio_stg_blocks": "1", "audio_skip_step": 0,
             "custom_branches": "negative:negative:2.0", "drop": None, "policy_link": "keep"}


@st.composite
def cases(draw):
    """A valid demo graph with 1-4 of its inputs replaced by hostile values (and sometimes a
    different preset, so every preset's own inputs get exercised)."""
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4, unique=True))
    case = dict(BASE_CASE)
    case["preset"] = draw(st.sampled_from(["standard_cfg", "ltx2_multimodal", "custom"]))
    for k in keys:
        case[k] = draw(FIELDS[k])
    return case


GUIDER_KEYS = ("parallel_size", "devices", "plan", "keep_model_loaded", "step_timeout_s")
FUZZ_OUTCOMES: list[dict] = []


def fuzz_graph(case: dict) -> dict:
    g = demo_graph(steps=2)
    for k in GUIDER_KEYS:
        g[GUIDER]["inputs"][k] = case[k]
    for k, v in case.items():
        if k in g[POLICY]["inputs"]:
            g[POLICY]["inputs"][k] = v
    if case["policy_link"] != "keep":
        g[GUIDER]["inputs"]["policy"] = case["policy_link"]
    drop = case["drop"]
    if drop:
        g[GUIDER]["inputs"].pop(drop, None)
        g[POLICY]["inputs"].pop(drop, None)
    return g


def _readable(msg: str) -> bool:
    return bool(msg.strip()) and "Traceback (most recent call last)" not in msg and 'File "' not in msg \
        and len(msg) < 2000


def _fuzz_once(server, case: dict) -> None:
    size, devices = _as_int(case["parallel_size"]) if not isinstance(case["parallel_size"], bool) else 1, case["devices"]
    # Sizes 3..64 on CPU devices are valid requests that start a real N-rank CPU group
    # (~0.8 GB RSS and ~10-20 s start-up per rank here): correct, but not what a fuzz on a
    # 2-core CI machine can afford. The 64-rank case is reported as a finding instead.
    assume(not (size is not None and 3 <= size <= 64 and (devices is None or _cpu_devices(devices))))
    g = fuzz_graph(case)
    t0 = time.monotonic()
    r = post_raw(server, g)
    outcome = {"case": {k: (v[:40] + "..." if isinstance(v, str) and len(v) > 40 else v) for k, v in case.items()}}
    assert r.status_code in (200, 400), f"POST /prompt answered HTTP {r.status_code}: {r.text[:500]}"
    body = r.json()
    if r.status_code == 400:
        outcome["result"] = "rejected"
        errors = body.get("node_errors") or {}
        assert errors or (body.get("error") or {}).get("message"), body
        for node in errors.values():
            for err in node["errors"]:
                assert err.get("message"), err
        outcome["detail"] = sorted({e["type"] for n in errors.values() for e in n["errors"]}) or \
            [(body.get("error") or {}).get("type")]
    else:
        entry = server.wait(body["prompt_id"], timeout=180)
        status = entry["status"]["status_str"]
        if status == "success":
            outcome["result"] = "success"
        else:
            err = execution_error(entry)
            assert err is not None, entry["status"]
            outcome["result"] = "error"
            outcome["detail"] = [err["node_id"], err["exception_type"], err["exception_message"][:200]]
            assert _readable(err["exception_message"]), err["exception_message"]
            if err["node_id"] in (GUIDER, POLICY, SAMPLER):
                # Errors raised by this pack's nodes are its own classes, with their own words.
                assert err["exception_type"].startswith("cfg_runtime.errors."), err
    outcome["seconds"] = round(time.monotonic() - t0, 2)
    FUZZ_OUTCOMES.append(outcome)
    check_alive(server)


@pytest.mark.slow
def test_fuzzed_node_inputs_end_cleanly(comfy_server):
    pids = warm_group(comfy_server)
    FUZZ_OUTCOMES.clear()
    base = BASE_CASE

    def ex(**kw):
        return example(case={**base, **kw})

    @settings(max_examples=40, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=cases())
    @ex(parallel_size=-5)
    @ex(parallel_size=100)
    @ex(devices="cuda:7")
    @ex(devices="tpu")
    @ex(devices="")
    @ex(devices="cpu,cpu,cpu")
    @ex(video_cfg="nan")
    @ex(preset="standard_cfg", cfg=float("inf"))
    @ex(preset="custom", custom_branches="::garbage::\n:::")
    @ex(video_stg_blocks="a,b,-3")
    @ex(video_stg_blocks="7")
    @ex(parallel_size=1, preset="custom", custom_branches="a:negative:1e400")
    def run(case):
        _fuzz_once(comfy_server, case)

    t0 = time.monotonic()
    run()
    counts = {}
    for o in FUZZ_OUTCOMES:
        counts[o["result"]] = counts.get(o["result"], 0) + 1
    errors = {}
    for o in FUZZ_OUTCOMES:
        if o["result"] == "error":
            seen = errors.setdefault(o["detail"][1], {"count": 0, "examples": []})
            seen["count"] += 1
            if len(seen["examples"]) < 3 and o["detail"][2] not in seen["examples"]:
                seen["examples"].append(o["detail"][2])
    rejected = {}
    for o in FUZZ_OUTCOMES:
        if o["result"] == "rejected":
            for t in o["detail"]:
                rejected[t] = rejected.get(t, 0) + 1
    record("fuzz", {"cases": len(FUZZ_OUTCOMES), "seconds": round(time.monotonic() - t0, 1), "outcomes": counts,
                    "rejections_by_type": rejected, "errors_by_type": errors})
    # The group survived the fuzz: a normal prompt still runs on the same ranks.
    comfy_server.run(demo_graph(steps=2), timeout=300)
    check_alive(comfy_server)
    assert len(FUZZ_OUTCOMES) >= 20
    record("fuzz_group_respawned", worker_pids(comfy_server.pid) != sorted(pids))


@pytest.mark.slow
def test_worker_sigkill_mid_prompt_fails_fast_and_next_prompt_respawns(comfy_server):
    pids = warm_group(comfy_server)
    fds_before = fd_count(comfy_server.pid)
    progress = Progress(comfy_server)
    try:
        prompt_id = comfy_server.queue(demo_graph(steps=400), client_id=progress.client_id)
        progress.wait_step(prompt_id, 5)
        victim = pids[1]  # rank 1: rank 0 is then blocked in the all-gather, the harder case
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        entry = comfy_server.wait(prompt_id, timeout=60)
        fail_s = time.monotonic() - t0
    finally:
        progress.close()
    err = execution_error(entry)
    assert err is not None, entry["status"]
    left, _ = wait_dead(pids, 10)
    t1 = time.monotonic()
    comfy_server.run(demo_graph(steps=2), timeout=300)
    recover_s = time.monotonic() - t1
    new = worker_pids(comfy_server.pid)
    fds_after = fd_count(comfy_server.pid)
    dups = pending_fd_dups(comfy_server.pid)
    record("worker_sigkill", {"victim": "rank 1", "fail_latency_s": round(fail_s, 2), "message": err["exception_message"],
                              "exception_type": err["exception_type"], "next_prompt_incl_respawn_s": round(recover_s, 1),
                              "old_pids": pids, "new_pids": new, "server_fds_before": fds_before,
                              "server_fds_after_recovery": fds_after, "server_pending_fd_dups": dups})
    assert fail_s <= 30.0
    assert err["exception_type"].endswith("WorkerDiedError"), err
    msg = err["exception_message"]
    assert "rank 1" in msg and f"pid {victim}" in msg and "signal 9" in msg and "restart" in msg, msg
    assert not left, f"old ranks {left} still alive after the fault"
    assert len(new) == 2 and not set(new) & set(pids)
    # The respawned group gets the base weights again (their shared-memory fds may reopen in
    # the ComfyUI process: up to one per weight tensor), but nothing may wait for the dead rank.
    assert dups == 0, f"{dups} fds sent to the dead group are still open in the ComfyUI process"


@pytest.mark.slow
def test_worker_killed_before_reading_its_job_leaks_no_fds(comfy_server):
    pids = warm_group(comfy_server)
    dups_before = pending_fd_dups(comfy_server.pid)
    fds_before = fd_count(comfy_server.pid)
    os.kill(pids[1], signal.SIGSTOP)  # rank 1 will never read the job...
    try:
        prompt_id = comfy_server.queue(demo_graph(steps=50))
        deadline = time.monotonic() + 30  # until the job waits, unread, for rank 1
        while pending_fd_dups(comfy_server.pid) <= dups_before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(pids[1], signal.SIGKILL)  # ...and dies with it unread
    entry = comfy_server.wait(prompt_id, timeout=60)
    err = execution_error(entry)
    dups = pending_fd_dups(comfy_server.pid)
    record("worker_killed_before_job_read", {"server_fds_before": fds_before, "server_fds_after": fd_count(comfy_server.pid),
                                             "pending_fd_dups_before": dups_before, "pending_fd_dups_after": dups})
    assert err is not None and err["exception_type"].endswith("WorkerDiedError"), entry["status"]
    assert dups == 0, f"{dups} fds of the unread job are still open in the ComfyUI process"


@pytest.mark.slow
def test_nan_step_timeout_is_refused_at_the_node(comfy_server):
    # Whatever group runs now (or none, after the previous test's fault) must stay as it is.
    pids = worker_pids(comfy_server.pid)
    t0 = time.monotonic()
    r = post_raw(comfy_server, demo_graph(steps=2, step_timeout_s=float("nan")))
    if r.status_code == 200:
        entry = comfy_server.wait(r.json()["prompt_id"], timeout=120)
        err = execution_error(entry)
        seconds = time.monotonic() - t0
        record("nan_step_timeout", {"seconds": round(seconds, 1), "error": err and [err["node_id"], err["exception_message"]],
                                    "group_changed": worker_pids(comfy_server.pid) != pids})
        assert err is not None
        assert err["node_id"] == GUIDER and "step_timeout" in err["exception_message"], err["exception_message"]
        assert seconds < 5
    else:
        assert r.status_code == 400 and GUIDER in r.json()["node_errors"]
    assert worker_pids(comfy_server.pid) == pids, "a bad widget value started or restarted a group"


@pytest.mark.slow
def test_slow_first_load_then_hung_worker_is_timed_out(comfy_server):
    timeout = 5.0  # the node's minimum
    old = set(worker_pids(comfy_server.pid))
    progress = Progress(comfy_server)
    log_mark = len(comfy_server.log_text())
    try:
        # 1. A fresh group (new spec) whose first job loads slowly: the ranks run at ~1/10 speed
        #    until rank 0 reports its first step. Load time is not a hang.
        prompt_id = comfy_server.queue(demo_graph(steps=3, step_timeout_s=timeout), client_id=progress.client_id)
        deadline = time.monotonic() + 240
        while "cfg-parallel group ready" not in comfy_server.log_text()[log_mark:]:
            assert time.monotonic() < deadline and comfy_server.alive(), comfy_server.log_tail()
            time.sleep(0.05)
        pids = [p for p in worker_pids(comfy_server.pid) if p not in old]
        assert len(pids) == 2
        t0 = time.monotonic()
        with Throttle(pids):
            while not progress.steps(prompt_id) and comfy_server.history(prompt_id) is None:
                assert time.monotonic() - t0 < 240
                time.sleep(0.05)
        load_s = time.monotonic() - t0
        entry = comfy_server.wait(prompt_id, timeout=120)
        err = execution_error(entry)
        record("slow_first_load", {"step_timeout_s": timeout, "throttled_load_s": round(load_s, 1),
                                   "status": entry["status"]["status_str"],
                                   "error": err and err["exception_message"]})
        assert entry["status"]["status_str"] == "success", err and err["exception_message"]

        # 2. A hung rank (alive, silent, its peer blocked in the all-gather) mid-prompt.
        pids = warm_group(comfy_server, step_timeout_s=timeout)
        prompt_id = comfy_server.queue(demo_graph(steps=400, step_timeout_s=timeout), client_id=progress.client_id)
        progress.wait_step(prompt_id, 5)
        t0 = time.monotonic()
        os.kill(pids[1], signal.SIGSTOP)
        try:
            entry = comfy_server.wait(prompt_id, timeout=120)
            fail_s = time.monotonic() - t0
        finally:
            if pid_alive(pids[1]):
                os.kill(pids[1], signal.SIGCONT)
    finally:
        progress.close()
    err = execution_error(entry)
    left, _ = wait_dead(pids, 10)
    record("hung_worker", {"step_timeout_s": timeout, "fail_latency_s": round(fail_s, 2),
                           "message": err and err["exception_message"]})
    assert err is not None and err["exception_type"].endswith("JobTimeoutError"), entry["status"]
    assert fail_s <= timeout + 10
    assert not left
    comfy_server.run(demo_graph(steps=2, step_timeout_s=timeout), timeout=300)


# === own servers: two at once, then stopped ==============================================
_pair: list = []


def _start_pair(tiny_ltxv_path) -> list:
    """Spawn the two servers of this module (not waiting for them)."""
    if not _pair:
        for _ in range(2):
            srv = ComfyServer(models={"diffusion_models/tiny_ltxv.safetensors": tiny_ltxv_path})
            tmp = srv.base_dir / "tmp"
            tmp.mkdir()
            srv.extra_env["TMPDIR"] = str(tmp)  # so the rendezvous dirs of its group can be found
            _pair.append(srv)
            srv.start(wait=False)
    return _pair


@pytest.fixture(scope="module", autouse=True)
def _early_pair(request):
    """Start the two own servers with the module's first test when some selected test needs
    them: their ~10-30 s start-up then overlaps the shared-server tests."""
    here = request.node.nodeid if hasattr(request.node, "nodeid") else ""
    wanted = any("server_pair" in getattr(item, "fixturenames", ()) and item.nodeid.startswith(here)
                 for item in request.session.items)
    if wanted:
        _start_pair(request.getfixturevalue("tiny_ltxv_path"))
    try:
        yield
    finally:
        while _pair:
            _pair.pop().stop()


@pytest.fixture(scope="module")
def server_pair(tiny_ltxv_path):
    """Two ComfyUI servers of this test module (started together), each with TMPDIR in its own
    folder. The tests kill them; module teardown stops whatever is left."""
    servers = _start_pair(tiny_ltxv_path)
    for srv in servers:
        if srv.proc is not None and srv.port is not None:
            srv.wait_ready()
    return servers


def store_dirs(server) -> list[str]:
    return sorted(p.name for p in (server.base_dir / "tmp").glob("cfgp-store-*"))


@pytest.mark.slow
def test_two_servers_run_size_two_groups_at_once(server_pair):
    a, b = server_pair
    # Long enough that the two prompts overlap; same seed, so the results must be equal too.
    ids = [(srv, srv.queue(demo_graph(steps=30, nonce=7))) for srv in (a, b)]
    entries = [srv.wait(pid, timeout=300) for srv, pid in ids]
    for e in entries:
        assert e["status"]["status_str"] == "success", execution_error(e)
    spans = []
    for e in entries:
        start = history_messages(e, "execution_start")[0]["timestamp"]
        end = history_messages(e, "execution_success")[0]["timestamp"]
        spans.append((start, end))
    overlap_ms = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])
    ranks = [worker_pids(srv.pid) for srv in (a, b)]
    listen = [listening_sockets(r) for r in ranks]
    peers = [established_peers(r) for r in ranks]
    record("two_servers", {"overlap_s": round(overlap_ms / 1000, 2), "rank_pids": ranks, "rank_listen": listen,
                           "store_dirs": [store_dirs(a), store_dirs(b)]})
    assert overlap_ms > 0, f"the prompts did not run at the same time: {spans}"
    assert all(len(r) == 2 for r in ranks) and not set(ranks[0]) & set(ranks[1])
    for ls in listen:
        assert ls == [], ls  # gloo's port is closed after the rendezvous
    for ps in peers:
        assert all(is_loopback(x) for x in ps), ps
    assert not set(listen[0]) & set(listen[1]), "the two groups share a port"
    assert a.saved_latent(entries[0]).equal(b.saved_latent(entries[1]))


def _kill_server_mid_prompt(srv, sig) -> dict:
    """Start a long prompt, send `sig` to the ComfyUI process only (not its process group),
    and report which of its descendants outlive it."""
    if len(worker_pids(srv.pid)) != 2:
        warm_group(srv)
    progress = Progress(srv)
    try:
        prompt_id = srv.queue(demo_graph(steps=400), client_id=progress.client_id)
        progress.wait_step(prompt_id, 3)
    finally:
        progress.close()
    family = descendants(srv.pid)
    names = {p: ("rank" if "spawn_main" in cmdline(p) else cmdline(p)[:70]) for p in family}
    ranks = worker_pids(srv.pid)
    t0 = time.monotonic()
    os.kill(srv.pid, sig)
    srv.proc.wait(timeout=30)
    left, seconds = wait_dead(family, 10)
    out = {"signal": signal.Signals(sig).name, "descendants": names, "ranks": ranks,
           "all_gone_after_s": round(time.monotonic() - t0, 2), "survivors": left,
           "rendezvous_dirs_left": store_dirs(srv)}
    for p in left:  # never leave them behind, whatever the verdict
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return out


@pytest.mark.slow
def test_server_sigterm_leaves_no_worker(server_pair):
    out = _kill_server_mid_prompt(server_pair[0], signal.SIGTERM)
    record("server_sigterm", out)
    assert len(out["ranks"]) == 2
    assert not out["survivors"], f"processes outlived the server: {out['survivors']}"


@pytest.mark.slow
def test_server_sigkill_leaves_no_worker(server_pair):
    out = _kill_server_mid_prompt(server_pair[1], signal.SIGKILL)
    record("server_sigkill", out)
    assert len(out["ranks"]) == 2
    assert not out["survivors"], f"processes outlived the server: {out['survivors']}"


def test_server_stop_leaves_no_rendezvous_files():
    stops = [FIGURES.get("server_sigterm"), FIGURES.get("server_sigkill")]
    if not any(stops):
        pytest.skip("needs the server stop tests of this module")
    left = [d for s in stops if s for d in s["rendezvous_dirs_left"]]
    assert not left, left
