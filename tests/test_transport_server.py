"""Model transport through a real ComfyUI server: what ComfyUI does to models reaches the
ranks intact (object patches of every core ModelSampling* node, samplers that need
ComfyUI's inference mode), size 2 == size 1 bit for bit."""
from __future__ import annotations

import pytest
import torch

from devkit.tiny_models import tiny_ltxv_graph

pytestmark = pytest.mark.server

POLICY = {
    "preset": "standard_cfg", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
    "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7,
    "video_skip_step": 0, "audio_cfg": 3.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 1.0,
    "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0",
}


def _guide(g: dict, size: int, model_ref: list, tag: str) -> str:
    """Add CFGPolicyBuilder + Multi-Branch Guider on `model_ref`; return the guider's node id."""
    g[f"{tag}p"] = {"class_type": "CFGPolicyBuilder", "inputs": dict(POLICY)}
    g[f"{tag}g"] = {"class_type": "MultiBranchGuider", "inputs": {
        "model": model_ref, "positive": ["2", 0], "negative": ["3", 0], "policy": [f"{tag}p", 0],
        "parallel_size": size, "devices": "cpu", "plan": "cost_balanced", "keep_model_loaded": True,
        "step_timeout_s": 120.0}}
    return f"{tag}g"


def _add_branch(g: dict, size: int, model_ref: list, tag: str, sampler: str = "euler") -> str:
    """One more sampling chain in the same prompt (own guider, sampler, SaveLatent); returns the SaveLatent id."""
    guider = _guide(g, size, model_ref, tag)
    g[f"{tag}k"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    g[f"{tag}s"] = {"class_type": "BasicScheduler", "inputs": {"model": model_ref, "scheduler": "simple",
                                                               "steps": 3, "denoise": 1.0}}
    g[f"{tag}x"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["5", 0], "guider": [guider, 0], "sampler": [f"{tag}k", 0], "sigmas": [f"{tag}s", 0],
        "latent_image": ["4", 0]}}
    g[f"{tag}o"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{tag}x", 0],
                                                          "filename_prefix": f"latents/{tag}"}}
    return f"{tag}o"


def _base_graph(nonce: int) -> dict:
    g = tiny_ltxv_graph(nonce=nonce)
    for key in ("6", "7", "8", "9", "10"):  # keep loader, conditioning, latent, noise
        del g[key]
    return g


def model_sampling_variants(info: dict) -> list[tuple[str, dict]]:
    """(node, inputs) for every core ModelSampling* node this ComfyUI has, one per choice of
    its first list input (e.g. eps / v_prediction / lcm / ...), other inputs at their defaults."""
    variants = []
    for name in sorted(n for n in info if n.startswith("ModelSampling")):
        required = info[name]["input"]["required"]
        base, choices_key = {}, None
        for key, spec in required.items():
            kind = spec[0]
            if key == "model":
                continue
            if isinstance(kind, list):
                base[key] = kind[0]
                choices_key = choices_key or key
            elif kind == "COMBO":
                base[key] = spec[1]["options"][0]
                choices_key = choices_key or key
            elif isinstance(spec[1], dict) and "default" in spec[1]:
                base[key] = spec[1]["default"]
            else:
                raise AssertionError(f"{name}: no default for input {key} ({spec})")
        options = required[choices_key][0] if choices_key and isinstance(required[choices_key][0], list) else \
            (required[choices_key][1]["options"] if choices_key else [None])
        for option in options:
            if "playground" in str(option):  # also swaps the latent format for SDXL's 4 channels: not for LTXV
                continue
            variants.append((name, {**base, **({choices_key: option} if choices_key else {})}))
    return variants


def _model_sampling_prompt(size: int, variants, nonce: int) -> tuple[dict, dict]:
    g = _base_graph(nonce)
    outputs = {}
    for i, (node, inputs) in enumerate(variants):
        g[f"m{i}"] = {"class_type": node, "inputs": {"model": ["1", 0], **inputs}}
        outputs[f"{node}{inputs}"] = _add_branch(g, size, [f"m{i}", 0], f"v{i}")
    outputs["plain"] = _add_branch(g, size, ["1", 0], "plain")
    return g, outputs


def test_every_model_sampling_node_size2_equals_size1(comfy_server):
    """Every core ModelSampling* node (object patch with a class local to the node's function),
    all in one prompt: each result differs from the unpatched model, and size 2 == size 1.
    The chains share one base model and differ only in the object patch, so a rank that kept
    the previous chain's model_sampling would give the wrong result."""
    variants = model_sampling_variants(comfy_server.object_info())
    names = {n for n, _ in variants}
    assert {"ModelSamplingDiscrete", "ModelSamplingSD3", "ModelSamplingFlux"} <= names, names
    results = {}
    for size, nonce in ((1, 101), (2, 102)):
        g, outputs = _model_sampling_prompt(size, variants, nonce)
        entry = comfy_server.run(g, timeout=600)
        results[size] = {k: comfy_server.saved_latent(entry, node_id=v) for k, v in outputs.items()}
    for key, serial in results[1].items():
        assert torch.equal(results[2][key], serial), key
    finite = [k for k, v in results[1].items() if torch.isfinite(v).all()]
    assert len(finite) >= len(results[1]) - 2, "most variants should sample to finite values"
    plain = results[1]["plain"]
    changed = [k for k in finite if k != "plain" and not torch.equal(results[1][k], plain)]
    assert len(changed) >= len(finite) - 3, (changed, finite)


def test_object_patch_change_between_prompts_reaches_the_ranks(comfy_server):
    """Same base model, same object-patch key (model_sampling), another prediction type in the
    next prompt: the ranks must use the new one (the sigmas alone, computed in the parent, do
    not carry it)."""
    out = {}
    for sampling in ("eps", "v_prediction"):
        for size in (1, 2):
            g = _base_graph(200 + 10 * len(sampling) + size)
            g["m"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": sampling,
                                                                        "zsnr": False}}
            node = _add_branch(g, size, ["m", 0], "a")
            out[(sampling, size)] = comfy_server.saved_latent(comfy_server.run(g, timeout=300), node_id=node)
    assert not torch.equal(out[("eps", 1)], out[("v_prediction", 1)])
    assert torch.equal(out[("eps", 2)], out[("eps", 1)])
    assert torch.equal(out[("v_prediction", 2)], out[("v_prediction", 1)])


@pytest.mark.parametrize("sampler", ["uni_pc", "uni_pc_bh2", "ipndm", "ipndm_v"])
def test_samplers_that_need_inference_mode(comfy_server, sampler):
    """These samplers modify views in place: they work only under torch.inference_mode(), as
    ComfyUI runs its nodes; the ranks must run jobs the same way."""
    out = {}
    for size in (1, 2):
        g = _base_graph(300 + size)
        node = _add_branch(g, size, ["1", 0], "a", sampler=sampler)
        out[size] = comfy_server.saved_latent(comfy_server.run(g, timeout=300), node_id=node)
    assert torch.isfinite(out[1]).all()
    assert torch.equal(out[2], out[1])
