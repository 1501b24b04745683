"""CFG_PARALLEL_START_AT_LAUNCH through a real ComfyUI server: the ranks start while ComfyUI
starts, and the first prompt at that size runs on them instead of starting its own; a bad
value is one console line and ComfyUI starts without a group."""
from __future__ import annotations

import time

import pytest
import torch

from devkit.comfy_server import ComfyServer
from devkit.tiny_models import build_tiny_ltxv, tiny_ltxv_graph

pytestmark = [pytest.mark.server]


def _graph(seed: int) -> dict:
    g = tiny_ltxv_graph(seed=seed, steps=2, width=64, height=64, length=9, prefix=f"latents/launch_{seed}")
    g["20"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["1", 0], "parallel_size": 2,
                                                                    "devices": "cpu"}}
    g["7"]["inputs"]["model"] = ["20", 0]
    return g


def _ready(server: ComfyServer, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = server.group_status()
        if status.get("state") == "ready" or time.monotonic() > deadline:
            return status
        time.sleep(1.0)


def test_group_started_with_comfyui_serves_the_first_prompt(tmp_path):
    model = build_tiny_ltxv(tmp_path / "tiny_ltxv.safetensors")
    with ComfyServer(models={"diffusion_models/tiny_ltxv.safetensors": model},
                     env={"CFG_PARALLEL_START_AT_LAUNCH": "cpu, cpu"}) as server:
        before = server.group_status()  # no prompt with the pack's sampling has run yet
        assert before["state"] in ("starting", "ready"), before
        pids = before["pids"]
        assert len(pids) == 2
        status = _ready(server)
        assert status["state"] == "ready" and status["jobs_run"] == 0, status
        parallel = server.saved_latent(server.run(_graph(5), timeout=300))
        after = server.group_status()
        assert after["pids"] == pids and after["jobs_run"] >= 1, after
        log = server.log_text()
        assert log.count("starting 2 rank(s)") == 1
        assert "CFG_PARALLEL_START_AT_LAUNCH" in log
        serial_graph = _graph(5)
        serial_graph["20"]["inputs"]["parallel_size"] = 1
        serial = server.saved_latent(server.run(serial_graph, timeout=300))
        assert torch.equal(parallel, serial)


@pytest.mark.parametrize("value, reason", [("cpu", "at least two ranks"), ("cuda:x,cpu", "cuda:x")])
def test_bad_launch_value_is_one_line_and_comfyui_starts(tmp_path, value, reason):
    with ComfyServer(env={"CFG_PARALLEL_START_AT_LAUNCH": value}) as server:
        assert server.group_status()["state"] == "not started"
        lines = [line for line in server.log_text().splitlines() if "CFG_PARALLEL_START_AT_LAUNCH" in line]
        assert len(lines) == 1 and "ignored" in lines[0] and reason in lines[0], lines
        assert "Traceback" not in server.log_text()
