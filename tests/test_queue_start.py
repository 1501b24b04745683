"""The group starts when a prompt that will use it is queued (nodes/queue_start.py): which prompts
start it (read from the pack's nodes and the policy nodes feeding them), and through a real
ComfyUI server, that the ranks are starting before the slow node ahead of the guider has finished,
that the node then uses them, and that the result equals size 1 bit for bit; a prompt that
ComfyUI's validation refuses, or one whose sampling gives one rank work, starts none."""
from __future__ import annotations

import time

import pytest
import torch

from devkit.comfy_server import ComfyServer, PromptRejected
from devkit.tiny_models import build_tiny_ltxv, tiny_ltxv_graph
from support.pack_nodes import guider_graph, pack_nodes
from support.paths import comfyui_available

pytestmark = pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI's comfy_api (V3 node API)")

QUEUED_LINE = "starting the worker group for the queued prompt"


def _group_for(prompt: dict):
    pack = pack_nodes()
    queue_start = pack.queue_start
    return queue_start.group_for(prompt, **pack.QUEUE_START)


def test_which_queued_prompts_start_the_group():
    two = guider_graph(1, 2, 3.0, 0.0, "x")
    settings = _group_for(two)
    assert settings is not None and settings.world_size == 2 and settings.devices == "cpu"
    assert _group_for(guider_graph(1, 2, 1.0, 0.0, "x")) is None  # cfg 1: one branch, one rank's work
    assert _group_for(guider_graph(1, 1, 3.0, 0.0, "x")) is None  # size 1
    linked = guider_graph(1, 2, 3.0, 0.0, "x")
    linked["7"]["inputs"]["parallel_size"] = ["40", 0]  # a value from another node: left to the node
    assert _group_for(linked) is None
    unknown = guider_graph(1, 2, 3.0, 0.0, "x")
    unknown["31"]["inputs"]["cfg"] = ["40", 0]  # the policy cannot be read here: left to the node
    assert _group_for(unknown) is None
    for key, value in (("step_timeout_s", float("nan")), ("devices", "cuda:\u00b2"), ("devices", "cpu,cpu,cpu")):
        refused = guider_graph(1, 2, 3.0, 0.0, "x")  # the node refuses these: they start nothing
        refused["7"]["inputs"][key] = value
        assert _group_for(refused) is None, (key, value)
    bad = guider_graph(1, 2, 3.0, 0.0, "x")
    bad["31"]["inputs"]["preset"] = "no_such_preset"  # the builder refuses it: left to the node, which says so
    assert _group_for(bad) is None
    ltx = guider_graph(1, 3, 3.0, 0.0, "x")
    ltx["31"]["inputs"]["preset"] = "ltx2_multimodal"
    assert _group_for(ltx).world_size == 3

    model = tiny_ltxv_graph(prefix="x")  # CFG Parallel under KSampler-style sampling: cfg not known here
    model["20"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["1", 0], "parallel_size": 2,
                                                                        "devices": "cpu"}}
    assert _group_for(model) is None
    model["20"]["inputs"]["sequence_split"] = "2"  # a split gives both ranks work whatever the cfg
    assert _group_for(model).sequence_degree == 2

    decode = {"1": {"class_type": "CFGParallelMultiGPU_VAEDecode", "inputs": {
        "samples": ["9", 0], "vae": ["8", 0], "tile_size": 512, "overlap": 64, "temporal_size": 64,
        "temporal_overlap": 8, "parallel_size": 2, "devices": "cpu"}}}
    assert _group_for(decode).world_size == 2


@pytest.mark.server
def test_a_queued_prompt_starts_the_ranks_before_its_slow_nodes_finish(tmp_path):
    model = build_tiny_ltxv(tmp_path / "tiny_ltxv.safetensors")
    with ComfyServer(models={"diffusion_models/tiny_ltxv.safetensors": model}) as server:
        invalid = guider_graph(3, 2, 3.0, 0.0, "latents/queued_invalid")
        invalid["1"]["inputs"]["unet_name"] = "missing.safetensors"
        with pytest.raises(PromptRejected):
            server.queue(invalid)
        assert QUEUED_LINE not in server.log_text()  # a prompt ComfyUI refuses starts no rank

        one_branch = server.queue(guider_graph(3, 2, 1.0, 2.0, "latents/queued_cfg1"))
        server.wait(one_branch, timeout=300)
        assert QUEUED_LINE not in server.log_text()  # one branch: no group for it

        queued_at = time.monotonic()
        prompt_id = server.queue(guider_graph(3, 2, 3.0, 8.0, "latents/queued_2"))
        log_now = server.log_text()  # the handler ran before /prompt answered; the slow node sleeps 8 s
        assert time.monotonic() - queued_at < 8.0
        assert QUEUED_LINE in log_now and "2 ranks on cpu" in log_now
        parallel = server.saved_latent(server.wait(prompt_id, timeout=300))
        log = server.log_text()
        assert log.count("starting 2 rank(s)") == 1  # the guider used the group the queue started
        assert "Traceback" not in log

        serial = server.saved_latent(server.run(guider_graph(3, 1, 3.0, 0.0, "latents/queued_1"), timeout=300))
        assert torch.equal(parallel, serial)
