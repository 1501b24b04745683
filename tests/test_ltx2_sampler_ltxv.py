"""The LTX2 Sampler node on LTX-Video (``ltxv``) through the real server of the suite.

Runs in CI (ComfyUI 0.3.75 has LTX-Video but not LTX-2): the tiny LTXV model of the
``comfy_server`` fixture, CFGPTestConditioning for the conds, the ltx2_multimodal policy
(cond, negative, STG on block 1; modality 1: LTX-Video has no audio, so no isolated pass).
The audio+video path is in tests/test_ltx2_av.py (needs ComfyUI 0.29).
"""
from __future__ import annotations

import pytest
import torch

from support.tiny_ltx2 import build_tiny_wan, ltx2_sampler_graph

pytestmark = pytest.mark.server

LTXV = "tiny_ltxv.safetensors"
WAN = "tiny_wan.safetensors"
# The tiny LTXV has 2 blocks and 32-wide captions; audio parameters are unused on a video latent.
LTXV_POLICY = dict(channels=32, video_modality=1.0, audio_modality=1.0, video_skip_step=1, audio_skip_step=1)


def graph(**kw):
    return ltx2_sampler_graph(LTXV, **{**LTXV_POLICY, **kw})


def sample(server, g) -> torch.Tensor:
    return server.saved_latent(server.run(g, timeout=300), node_id="10")






def test_ltx2_sampler_is_listed(comfy_server):
    info = comfy_server.object_info("LTX2Sampler")["LTX2Sampler"]
    assert info["output"] == ["LATENT", "LATENT", "IMAGE"]
    assert set(info["input"]["required"]) >= {"model", "positive", "negative", "policy", "latent", "sampler",
                                              "sigmas", "noise_seed", "mode", "parallel_size"}
    assert set(info["input"]["optional"]) >= {"upscale_model", "vae", "stage2_model", "decode", "tile_size", "overlap",
                                              "temporal_size", "temporal_overlap"}


def test_one_stage_size2_equals_size1_bit_for_bit(comfy_server):
    serial = sample(comfy_server, graph(size=1, nonce=101))
    parallel = sample(comfy_server, graph(size=2, nonce=102))
    assert tuple(serial.shape) == (1, 128, 2, 2, 2) and torch.isfinite(serial).all()
    assert torch.equal(parallel, serial)
    # the same prompt again on the persistent group: same bits, no reload. (Query the status only
    # after it: a status-only prompt makes ComfyUI drop the cached UNETLoader output, and a model
    # that ComfyUI loads anew is a new model for the ranks too.)
    assert torch.equal(sample(comfy_server, graph(size=2, nonce=103)), serial)
    per_rank = comfy_server.group_status()["last_job"]["per_rank"]
    assert not any(r["model_reloaded"] for r in per_rank)
    # 3 steps, skip_step 1: steps 0 and 2 are guided, step 1 reuses them and runs no forward
    assert sorted((k, n) for r in per_rank for k, n in r["forwards"].items()) == \
        [("cond", 2), ("negative", 2), ("perturbed", 2)]


def test_one_stage_equals_multi_branch_guider(comfy_server):
    """The node runs what Multi-Branch Guider + SamplerCustomAdvanced run for the same inputs."""
    g = graph(size=1, nonce=104)
    node = sample(comfy_server, g)
    inputs = g["9"]["inputs"]
    g["5"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": inputs["noise_seed"]}}
    g["7"] = {"class_type": "MultiBranchGuider", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "policy": ["20", 0], "parallel_size": 1,
        "devices": "", "plan": "cost_balanced", "keep_model_loaded": True, "step_timeout_s": 120.0}}
    g["9"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["5", 0], "guider": ["7", 0], "sampler": ["6", 0], "sigmas": ["8", 0], "latent_image": ["4", 0]}}
    del g["12"]  # SaveLatent of the stage-1 output
    assert torch.equal(sample(comfy_server, g), node)


def test_bad_inputs_become_node_errors(comfy_server, tmp_path):
    msg = comfy_server.run_failing(graph(mode="two_stage", nonce=105))
    assert msg.startswith("LTX2Sampler") and "upscale_model" in msg
    msg = comfy_server.run_failing(graph(nonce=106, video_stg_blocks="2", audio_stg_blocks="2"))
    assert msg.startswith("LTX2Sampler") and "out of range" in msg and "2 transformer blocks" in msg
    msg = comfy_server.run_failing(graph(nonce=107, video_modality=3.0))
    assert "modality-isolated pass" in msg
    comfy_server.add_model("diffusion_models", WAN, build_tiny_wan(tmp_path / WAN))
    msg = comfy_server.run_failing(ltx2_sampler_graph(WAN, **{**LTXV_POLICY, "nonce": 108}))
    assert msg.startswith("LTX2Sampler: The LTX2 Sampler needs an LTX model") and "WAN21" in msg
    # and the server still samples afterwards
    assert torch.isfinite(sample(comfy_server, graph(size=2, nonce=109))).all()


def test_two_stage_needs_a_comfyui_with_the_upsampler(tiny_ltxv_path):
    """In process: on a ComfyUI without LTXVLatentUpsampler (0.3.75) two-stage fails before stage 1."""
    import importlib.util

    from cfg_runtime.errors import PolicyError
    from cfg_runtime.adapters.sampling.ltx_pipeline import StagePlan, check_ltx_inputs
    from cfg_runtime.guidance.presets import standard_cfg
    from devkit.tiny_models import load_tiny_ltxv, tiny_latent

    if importlib.util.find_spec("comfy_extras.nodes_lt_upsampler") is not None:
        pytest.skip("this ComfyUI has LTXVLatentUpsampler (two-stage is tested in tests/test_ltx2_av.py)")
    model = load_tiny_ltxv(tiny_ltxv_path)
    with pytest.raises(PolicyError, match="no LTXVLatentUpsampler"):
        check_ltx_inputs(model, standard_cfg(3.0), {"samples": tiny_latent()}, StagePlan(True), object(), object(),
                         None)
