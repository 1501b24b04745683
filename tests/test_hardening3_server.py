"""Hardening, round three (issue 27), through a real ComfyUI server and real processes.

The last raw errors (block lists, a rank at its open-file limit, a conditioning of the wrong
width at size 1, a fractional parallel size), a group started for nothing (one branch),
the host-memory suggestion, and leftovers of faults and failed test runs. Each test failed
before its fix. Figures are printed (``pytest -s``) and written to
``test-artifacts/hardening3_server.json``.
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.demo_prompts import GUIDER, POLICY, POSITIVE, demo_graph, failing, post_raw, warm_group
from support.figures import Figures
from support.paths import REPO
from support.processes import fd_count, wait_dead, worker_pids
from support.tiny_ltx2 import ltx2_sampler_graph

pytestmark = pytest.mark.server

FIGURES = Figures("hardening3", __file__)
record = FIGURES.record
_write_figures = FIGURES.fixture()
NEGATIVE = demo_graph()[GUIDER]["inputs"]["negative"][0]


def shutdown_group(server) -> None:
    server.run({"1": {"class_type": "CFGParallelGroupStatus", "inputs": {"shutdown": True}}}, timeout=120)
    wait_dead(worker_pids(server.pid), 30)


# === 1. block lists =======================================================================
@pytest.mark.parametrize("text,what", [("²", "(use the digits 0-9)"), ("9" * 5000, "too large for a block index")])
def test_block_list_of_odd_digits_is_refused_readably(comfy_server, text, what):
    g = demo_graph(parallel_size=1)
    g[POLICY]["inputs"]["video_stg_blocks"] = text
    err = failing(comfy_server, g)
    msg = err["exception_message"]
    record(f"blocks_{len(text)}", msg)
    assert err["exception_type"].endswith("PolicyError") and what in msg and "e.g. '29'" in msg, err
    assert len(msg) < 400


# === 2. a rank at its open-file limit =====================================================
def test_rank_at_its_open_file_limit_says_what_to_do(comfy_server):
    pids = warm_group(comfy_server, devices="cpu")
    limit = fd_count(pids[1]) + 2  # room for the connection that brings the fds, not for the fds
    resource.prlimit(pids[1], resource.RLIMIT_NOFILE, (limit, limit))  # hard limit: the rank cannot lift it
    t0 = time.monotonic()
    err = failing(comfy_server, demo_graph(steps=2))  # new conditioning tensors travel as fds
    seconds = time.monotonic() - t0
    msg = err["exception_message"]
    after = comfy_server.run(demo_graph(steps=2), timeout=300)
    record("fd_limit", {"seconds": round(seconds, 2), "message": msg, "limit": limit,
                        "next_prompt": after["status"]["status_str"]})
    assert err["exception_type"].endswith("JobFailedError"), err
    assert "ran out of open files" in msg and "ulimit -n" in msg and f"limit {limit}" in msg, msg
    assert len(msg) < 600
    assert seconds < 8, f"{seconds:.1f} s: a rank that cannot unpack the job is not waited for"
    new = worker_pids(comfy_server.pid)
    assert len(new) == 2 and pids[1] not in new  # the group was restarted


# === 3. size 1 checks what size 2 checks ==================================================
def test_conditioning_of_the_wrong_width_reads_the_same_at_every_size(comfy_server):
    messages = {}
    for size in (1, 2):
        g = demo_graph(steps=2, parallel_size=size)
        for node in (POSITIVE, NEGATIVE):
            g[node]["inputs"]["channels"] = 16  # the tiny LTXV takes 32
        err = failing(comfy_server, g)
        assert err["exception_type"].endswith("ModelInputError"), err
        messages[size] = err["exception_message"]
    record("wrong_width", messages)
    assert messages[1] == messages[2]
    assert "positive 16" in messages[1] and "text encoder" in messages[1] and len(messages[1]) < 400


def _cfg_parallel_graph(size, cfg: float = 3.0, prefix: str = "h3_cp", sampler: str = "euler") -> dict:
    g = demo_graph(steps=2)
    model = g[GUIDER]["inputs"]["model"]
    return {
        "m": g[model[0]], "pos": g[POSITIVE], "neg": g[NEGATIVE],
        "lat": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                                 "batch_size": 1}},
        "cp": {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["m", 0], "parallel_size": size,
                                                                     "devices": "cpu"}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["cp", 0], "seed": 7, "steps": 2, "cfg": cfg, "sampler_name": sampler, "scheduler": "simple",
            "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": f"latents/{prefix}"}},
    }


def test_fractional_parallel_size_is_refused_on_every_node(comfy_server):
    graphs = {"Multi-Branch Guider": (demo_graph(parallel_size=1.5), GUIDER),
              "CFG Parallel": (_cfg_parallel_graph(1.5), "cp"),
              "LTX2 Sampler": (ltx2_sampler_graph("tiny_ltxv.safetensors", size=1.5, channels=32), "9")}
    seen = {}
    for name, (graph, node) in graphs.items():
        r = post_raw(comfy_server, graph)
        assert r.status_code == 400, (name, r.status_code, r.text[:500])
        errors = r.json()["node_errors"][node]["errors"]
        text = json.dumps(errors)
        seen[name] = errors[0].get("details")
        assert "parallel_size must be a whole number, got 1.5" in text and "write 1, 2" in text, (name, text)
    record("fractional_parallel_size", seen)


# === 4. one branch: no group ==============================================================
ONE_RANK_LINE = "only 1 of the 2 ranks would work"


def test_one_branch_runs_in_comfyui_without_a_group(comfy_server):
    shutdown_group(comfy_server)
    mark = len(comfy_server.log_text())
    t0 = time.monotonic()
    entry = comfy_server.run(_cfg_parallel_graph(2, cfg=1.0, prefix="h3_one2"), timeout=300)
    seconds = time.monotonic() - t0
    spawned = worker_pids(comfy_server.pid)
    serial = comfy_server.run(_cfg_parallel_graph(1, cfg=1.0, prefix="h3_one1"), timeout=300)
    guider = comfy_server.run(demo_graph(steps=2, parallel_size=2, **{}) | _one_branch_policy(), timeout=300)
    log = comfy_server.log_text()[mark:]
    lines = [ln for ln in log.splitlines() if ONE_RANK_LINE in ln]
    record("one_branch", {"seconds": round(seconds, 2), "ranks_started": spawned, "console": lines[:1]})
    assert spawned == [] and worker_pids(comfy_server.pid) == [], "a group was started for one branch"
    assert len(lines) == 2, lines  # one line per prompt (CFG Parallel, Multi-Branch Guider)
    # both nodes have the sequence_split widget, and LTX-Video has a split: the line names it
    assert all("sequence_split auto splits LTX-Video over the other ranks" in ln for ln in lines), lines
    a, b = comfy_server.saved_latent(entry, "save"), comfy_server.saved_latent(serial, "save")
    assert a.equal(b)
    assert guider["status"]["status_str"] == "success"


def test_cfg_pp_sampler_at_cfg_one_still_uses_both_ranks(comfy_server):
    """A *_cfg_pp sampler runs the negative pass at cfg 1 too: two branches, so the group runs them."""
    mark = len(comfy_server.log_text())
    comfy_server.run(_cfg_parallel_graph(2, cfg=1.0, prefix="h3_pp", sampler="euler_cfg_pp"), timeout=300)
    assert len(worker_pids(comfy_server.pid)) == 2
    assert ONE_RANK_LINE not in comfy_server.log_text()[mark:]


def _one_branch_policy() -> dict:
    g = demo_graph()
    policy = dict(g[POLICY], inputs=dict(g[POLICY]["inputs"], preset="standard_cfg", cfg=1.0))
    return {POLICY: policy}


# === 5. the host-memory suggestion ========================================================
def _mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("MemAvailable:"))


def test_host_memory_refusal_suggests_what_fits_with_headroom_and_cores(comfy_server):
    if _mem_available_mib() > 64 * 800:
        pytest.skip("this host has room for 64 CPU ranks")
    err = failing(comfy_server, demo_graph(steps=2, parallel_size=64, devices="cpu"))
    msg = err["exception_message"]
    found = re.search(r"Lower the parallel size to (\d+) or less|Run at parallel size 1", msg)
    record("host_memory", {"message": msg, "cores": os.cpu_count(), "available_mib": round(_mem_available_mib())})
    assert err["exception_type"].endswith("GroupConfigError") and found, msg
    suggested = int(found.group(1)) if found.group(1) else 1
    assert suggested <= (os.cpu_count() or 1), msg
    assert suggested * 800 <= 0.8 * _mem_available_mib() or suggested == 1, msg


# === 6. leftovers =========================================================================
def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


def _owner(name: str) -> int | None:
    m = re.match(r"sem\.mp-cfgp(\d+)-", name)
    return int(m.group(1)) if m else None


def test_failed_test_run_leaves_nothing_behind(tmp_path):
    """A pytest run with faults (a rank and the resource tracker SIGKILLed, the group killed with its server)
    that fails: nothing of it stays in its temp folder or in /dev/shm."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    shm_before = _shm_names()
    env = dict(os.environ, TMPDIR=str(tmp), CFGP_FAILING_RUN="1")
    env.pop("PYTEST_ADDOPTS", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          str(Path(__file__).parent / "support" / "failing_run.py"),
                          f"--basetemp={tmp_path / 'basetemp'}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "this run fails on purpose" in out, out[-3000:]
    time.sleep(1.0)
    left = sorted(n for n in os.listdir(tmp) if not n.startswith("torchinductor_"))  # torch's cache, meant to stay
    used = [n for n in json.loads(re.search(r"\[failing-run-semaphores\] (.*)", out).group(1))
            if not n.endswith("(deleted)")]  # named semaphores the run's processes had open (the others had no name)
    shm_now = _shm_names()
    left_shm = sorted(n for n in used if n in shm_now and n not in shm_before)
    record("failed_run_leftovers", {"temp_folder": left, "semaphores_used": used, "semaphores_left": left_shm})
    assert used and all(_owner(n) is not None for n in used), used  # named by their owner pid
    assert left == [], left
    assert left_shm == [], left_shm
