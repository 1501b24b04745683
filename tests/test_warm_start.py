"""The warm start (group.warm_start): ranks forked by a fork server that imported torch before any
group started. Each case runs in a fresh Python process, since the server is one per process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from devkit.comfy_server import ComfyServer
from devkit.tiny_models import build_tiny_ltxv
from support.pack_nodes import guider_graph
from support.paths import comfyui_available
from support.processes import cmdline, descendants, wait_dead

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    from cfg_runtime.group import warm_start
    warm = {warm!r}
    if warm:
        assert warm_start.start(("torch", "colorsys"))
    os.environ["CFGP_SET_LATER"] = "after the fork server started"
    os.environ.pop("CFGP_GONE_LATER", None)
    from cfg_runtime.group import GroupSpec, WorkerGroup
    from cfg_runtime.guidance.presets import standard_cfg
    from support.group_jobs import EnvJob
    from support.toy import ToySampleJob, run_serial
    import torch
    t0 = time.monotonic()
    g = WorkerGroup(GroupSpec(("cpu", "cpu"), step_timeout_s=60, start_timeout_s=120))
    g.start()
    start_s = time.monotonic() - t0
    seen = g.run(EnvJob("CFGP_SET_LATER", modules=("colorsys",))).value
    gone = g.run(EnvJob("CFGP_GONE_LATER")).value
    job = ToySampleJob(standard_cfg(4.5), steps=3, batch=2)
    equal = torch.equal(g.run(job).value, run_serial(job)[0])
    print(json.dumps({{"server": warm_start.server_pid(), "ranks": [r.process.pid for r in g.ranks],
                      "warm_ctx": g._ctx is warm_start.context() and warm_start.context() is not None,
                      "ready": [r.ready.seconds for r in g.ranks], "start_s": start_s,
                      "seen": seen, "gone": gone, "equal": equal}}), flush=True)
    g.teardown()
""")


def _run(warm: bool) -> tuple[dict, subprocess.CompletedProcess]:
    env = dict(os.environ, CFGP_GONE_LATER="set when Python started", PYTHONPATH=str(REPO))
    code = SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), warm=warm)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork server and /proc are Linux's")
def test_warm_ranks_are_forked_by_the_server_with_the_parents_environment_and_equal_serial():
    report, proc = _run(warm=True)
    assert report["warm_ctx"] and report["server"]
    seen = report["seen"]
    assert seen["ppid"] == report["server"]  # forked by the server, not spawned by the parent
    assert seen["held"] == ["colorsys"]  # imported by the server before the fork
    assert seen["value"] == "after the fork server started"  # the parent's environment at the group start
    assert report["gone"]["value"] is None  # removed in the parent after the server started: gone on the ranks
    assert report["equal"]
    # the parent exited: the server and the ranks are gone with it
    alive, _ = wait_dead([report["server"], *report["ranks"]], timeout=30)
    assert alive == []
    assert "Traceback" not in proc.stderr


def test_without_the_warm_start_ranks_are_spawned_as_before():
    report, _ = _run(warm=False)
    assert not report["warm_ctx"] and report["server"] is None
    assert report["seen"]["ppid"] != 0 and report["seen"]["held"] == []
    assert report["seen"]["value"] == "after the fork server started" and report["gone"]["value"] is None
    assert report["equal"]


@pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI's comfy_api (V3 node API)")
def test_a_server_with_the_warm_start_forks_its_ranks_equals_size_1_and_leaves_nothing_when_killed(tmp_path):
    model = build_tiny_ltxv(tmp_path / "tiny_ltxv.safetensors")
    server = ComfyServer(models={"diffusion_models/tiny_ltxv.safetensors": model},
                         env={"CFG_PARALLEL_WARM_START": "1"})
    with server:
        parallel = server.saved_latent(server.run(guider_graph(5, 2, 3.0, 0.0, "latents/warm_2"), timeout=300))
        log = server.log_text()
        assert log.count("(forked warm with torch imported; ") == 2  # each rank's ready line: preloaded
        assert "Traceback" not in log and "warm start is off" not in log
        processes = descendants(server.pid)
        servers = [p for p in processes if "forkserver" in cmdline(p) and _ppid(p) == server.pid]
        assert len(servers) == 1
        ranks = [p for p in processes if _ppid(p) == servers[0]]
        assert len(ranks) == 2
        serial = server.saved_latent(server.run(guider_graph(5, 1, 3.0, 0.0, "latents/warm_1"), timeout=300))
        assert torch.equal(parallel, serial)
        os.kill(server.pid, signal.SIGKILL)  # ComfyUI killed: the fork server and the ranks go with it
        alive, _ = wait_dead(processes, timeout=30)
        assert alive == []
