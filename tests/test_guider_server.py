"""The Multi-Branch Guider through a real ComfyUI server: size 2 == size 1 bit for bit."""
from __future__ import annotations

import json
import time

import pytest
import torch

from devkit.comfy_server import PromptRejected
from devkit.tiny_models import tiny_ltxv_graph

pytestmark = pytest.mark.server

POLICY_DEFAULTS = {
    "preset": "standard_cfg", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
    "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7,
    "video_skip_step": 0, "audio_cfg": 3.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 1.0,
    "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0",
}


def guided_graph(size: int, devices: str = "cpu", nonce: int = 0, lora: str | None = None, steps: int = 3,
                 **policy) -> dict:
    """The harness graph with core CFGGuider swapped for CFGPolicyBuilder + Multi-Branch Guider."""
    g = tiny_ltxv_graph(lora_name=lora, steps=steps, nonce=nonce)
    model = g["7"]["inputs"]["model"]
    g["20"] = {"class_type": "CFGPolicyBuilder", "inputs": {**POLICY_DEFAULTS, **policy}}
    g["7"] = {"class_type": "MultiBranchGuider", "inputs": {
        "model": model, "positive": ["2", 0], "negative": ["3", 0], "policy": ["20", 0], "parallel_size": size,
        "devices": devices, "plan": "cost_balanced", "keep_model_loaded": True, "step_timeout_s": 120.0}}
    return g


def sample(server, graph) -> torch.Tensor:
    return server.saved_latent(server.run(graph, timeout=180))






def test_object_info_lists_the_nodes(comfy_server):
    info = comfy_server.object_info()
    for name, display in (("CFGPolicyBuilder", "CFGPolicy Builder"), ("MultiBranchGuider", "Multi-Branch Guider"),
                          ("LTX2Sampler", "LTX2 Sampler"), ("CFGParallelGroupStatus", "CFG Parallel Group Status")):
        assert info[name]["display_name"] == display
        assert info[name]["description"]
    guider = info["MultiBranchGuider"]["input"]
    assert set(guider["required"]) >= {"model", "positive", "policy", "parallel_size", "devices", "plan"}
    assert "negative" in guider["optional"]
    assert info["MultiBranchGuider"]["output"] == ["GUIDER"]
    assert info["CFGPolicyBuilder"]["output"] == ["CFG_POLICY", "STRING"]
    assert all("tooltip" in spec[1] for spec in info["CFGPolicyBuilder"]["input"]["required"].values())


@pytest.mark.parametrize("policy", [
    {"preset": "standard_cfg", "cfg": 4.0},
    {"preset": "standard_cfg", "cfg": 3.0, "guidance_rescale": 0.7, "cfg_zero_star": True},
    {"preset": "ltx2_multimodal"},  # cond + negative + STG on block 1 (modality 1: no isolated pass on LTXV)
    {"preset": "custom", "custom_branches": "negative:negative:2.0\nalt:positive:-0.5"},
], ids=["cfg", "cfg_rescale_zero_star", "ltx2_stg", "custom3"])
def test_size2_equals_size1_bit_for_bit(comfy_server, policy):
    serial = sample(comfy_server, guided_graph(1, nonce=1, **policy))
    parallel = sample(comfy_server, guided_graph(2, nonce=2, **policy))
    assert torch.isfinite(serial).all()
    assert torch.equal(parallel, serial)


def test_three_ranks_for_three_branches(comfy_server):
    policy = {"preset": "ltx2_multimodal"}
    serial = sample(comfy_server, guided_graph(1, nonce=3, **policy))
    assert torch.equal(sample(comfy_server, guided_graph(3, nonce=4, **policy)), serial)
    status = comfy_server.group_status()
    forwards = [r["forwards"] for r in status["last_job"]["per_rank"]]
    assert sorted(k for f in forwards for k in f) == ["cond", "negative", "perturbed"]
    assert all(len(f) == 1 for f in forwards)  # one branch per rank


def test_size1_matches_core_cfg_guider(comfy_server):
    core = sample(comfy_server, tiny_ltxv_graph(cfg=4.0, steps=3, nonce=5))
    ours = sample(comfy_server, guided_graph(1, nonce=6, cfg=4.0))
    # core batches cond and uncond into one forward; we run one forward per branch, so the
    # matmul kernels see other batch sizes: equal up to float32 rounding.
    torch.testing.assert_close(ours, core, rtol=1e-5, atol=1e-5)


def test_lora_model_matches_at_size1_and_size2(comfy_server):
    base = sample(comfy_server, guided_graph(1, nonce=7))
    serial = sample(comfy_server, guided_graph(1, nonce=8, lora="tiny_lora.safetensors"))
    parallel = sample(comfy_server, guided_graph(2, nonce=9, lora="tiny_lora.safetensors"))
    assert not torch.equal(serial, base)
    assert torch.equal(parallel, serial)
    # and back to the plain model on the same persistent group
    assert torch.equal(sample(comfy_server, guided_graph(2, nonce=10)), base)


def test_second_prompt_reuses_the_loaded_model(comfy_server):
    sample(comfy_server, guided_graph(2, nonce=11))
    t0 = time.monotonic()
    sample(comfy_server, guided_graph(2, nonce=12))
    second = time.monotonic() - t0
    status = comfy_server.group_status()
    assert status["state"] == "ready" and len(status["pids"]) == 2
    assert not any(r["model_reloaded"] for r in status["last_job"]["per_rank"])
    print(f"second prompt at size 2 (queue to result): {second:.2f} s; group job {status['last_job']['seconds']} s")


def test_bad_inputs_become_node_errors(comfy_server):
    msg = comfy_server.run_failing(guided_graph(2, devices="cuda:0,cuda:1", nonce=13))
    assert "MultiBranchGuider" in msg and "this ComfyUI process sees 0" in msg
    msg = comfy_server.run_failing(guided_graph(3, devices="cpu,cpu", nonce=14))
    assert "exactly one device per rank" in msg
    msg = comfy_server.run_failing(guided_graph(2, nonce=15, preset="ltx2_multimodal", video_modality=3.0))
    assert "modality-isolated pass" in msg and "LTX-2 audio+video" in msg
    msg = comfy_server.run_failing(guided_graph(2, nonce=16, preset="ltx2_multimodal", video_stg_blocks="7"))
    assert "out of range" in msg
    msg = comfy_server.run_failing(guided_graph(1, nonce=17, preset="custom", custom_branches="oops"))
    assert "name:positive|negative:weight" in msg
    # a node that replaces core's CFG is a second CFG rule on a custom policy, at any size
    # (on standard CFG it composes: test_guidance_nodes.py)
    g = guided_graph(1, nonce=19, preset="custom")
    g["31"] = {"class_type": "RescaleCFG", "inputs": {"model": g["7"]["inputs"]["model"], "multiplier": 0.7}}
    g["7"]["inputs"]["model"] = ["31", 0]
    msg = comfy_server.run_failing(g)
    assert "RescaleCFG (sampler_cfg_function)" in msg and "the Multi-Branch Guider" in msg and "custom" in msg, msg
    # after all that, the server and the group still work
    assert torch.isfinite(sample(comfy_server, guided_graph(2, nonce=20))).all()


def test_out_of_range_widget_is_rejected_before_running(comfy_server):
    with pytest.raises(PromptRejected) as info:
        comfy_server.queue(guided_graph(0, nonce=21))
    assert "7" in info.value.node_errors


def test_progress_advances_per_step_at_size2(comfy_server):
    client_id = "progress-test"
    ws = comfy_server.ws_connect(client_id)
    try:
        prompt_id = comfy_server.queue(guided_graph(2, nonce=22, steps=5), client_id=client_id)
        steps = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue  # binary preview frames
            msg = json.loads(raw)
            data = msg.get("data", {})
            if msg["type"] == "progress" and data.get("prompt_id") == prompt_id:
                steps.append((data["value"], data["max"]))
            if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
    finally:
        ws.close()
    if _throttles_progress(comfy_server):
        # 0.29 sends the first and the last step always and drops an update that comes
        # sooner than its minimum interval after the last one (comfy.utils.ProgressBar).
        assert steps[0] == (1, 5) and steps[-1] == (5, 5), steps
        assert [v for v, _ in steps] == sorted(set(v for v, _ in steps)), steps
    else:
        assert steps == [(i, 5) for i in range(1, 6)], steps


def _throttles_progress(server) -> bool:
    """Whether that ComfyUI's ProgressBar throttles its updates (0.29 does, 0.3.75 does not)."""
    return "PROGRESS_THROTTLE_MIN_INTERVAL" in (server.comfyui_dir / "comfy" / "utils.py").read_text()


def test_a_first_parallel_prompt_says_what_it_waits_for(comfy_server):
    """From the first second of a cold start: the sampler node's progress text says the workers
    are starting and how many are ready, then that the ranks load the model, then that it
    samples; the console names every rank that got ready."""
    import struct

    comfy_server.run({"1": {"class_type": "CFGParallelMultiGPU_GroupStatus", "inputs": {"shutdown": True}}})
    client_id = "startup-text"
    ws = comfy_server.ws_connect(client_id)
    texts = []
    try:
        prompt_id = comfy_server.queue(guided_graph(2, nonce=33), client_id=client_id)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            raw = ws.recv()
            if isinstance(raw, bytes):
                if struct.unpack(">I", raw[:4])[0] == 3:  # BinaryEventTypes.TEXT: node id, then the text
                    n = struct.unpack(">I", raw[4:8])[0]
                    texts.append(raw[8 + n:].decode())
                continue
            msg = json.loads(raw)
            data = msg.get("data", {})
            if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
    finally:
        ws.close()
    joined = "\n".join(texts)
    print(joined)  # pytest -s: what the node showed
    assert "starting 2 workers, 0/2 ready" in joined, texts
    assert "2 workers ready in" in joined, texts
    assert "loading the model" in joined and "model ready in" in joined, texts
    assert texts.index(next(t for t in texts if "starting 2 workers" in t)) < \
        texts.index(next(t for t in texts if "loading the model" in t)), texts
    assert "sampled on 2 ranks" in texts[-1], texts
    log = comfy_server.log_text()
    assert "[rank 1]" in log or "rank 1 ready" in log, comfy_server.log_tail()
