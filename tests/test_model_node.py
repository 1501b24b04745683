"""The CFG Parallel model node through a real ComfyUI server: the graphs users already have.

Each prompt holds the same sampling chain three times: with the node at parallel size 1,
at size 2 (a persistent 2-rank gloo group on the CPU) and without the node (core's own
sampling). Size 2 must equal size 1 bit for bit; without the node the result may differ
from size 1 only by core's batching rounding (core evaluates cond and uncond in one
batched forward, the pack one branch per forward): within ``BOUND``, and not equal to
size 1 bit for bit (which would mean the node did nothing). Tiny random-weight models
built with ComfyUI's classes, loaded by core's UNETLoader:

* KSampler on a tiny LTX-Video model, with and without a noise mask (SetLatentNoiseMask);
* a Wan-2.2-style two-expert KSamplerAdvanced graph: two different tiny Wan models behind
  ModelSamplingSD3, the first with add_noise and return_with_leftover_noise for steps
  0-2 of 4, the second from step 2 without noise; the leftover-noise latent is compared too;
* CFGGuider + SamplerCustomAdvanced, BasicGuider, DualCFGGuider (regular and nested);
* a connected CFG_POLICY replaces the sampler's cfg;
* what cannot be mapped (PerpNegGuider, RescaleCFG's CFG function on a connected custom policy,
  an LTX-2 policy on a Wan model) is refused with a message, before any rank runs;
* the two-expert graph, three prompts in a row, loads each model on every rank once;
* cfg 1 on two ranks: the idle rank is named, and sequence_split auto puts it to work.
"""
from __future__ import annotations

import pytest
import torch

from support.paths import comfyui_available

pytestmark = pytest.mark.server

LTXV, WAN_HIGH, WAN_LOW = "tiny_ltxv.safetensors", "cfgp_tiny_wan_high.safetensors", "cfgp_tiny_wan_low.safetensors"
LTXAV, AUDIO_VAE = "cfgp_tiny_ltxav.safetensors", "tiny_ltx_audio_vae.safetensors"
BOUND = 1e-4  # |core - pack at size 1| on outputs of magnitude ~1-10: float32 rounding over a few steps
VARIANTS = ("s1", "s2", "core")
MEASURED: dict[str, float] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ltxv_path):
    from support.servers import add_ltxav, serve_models

    if not comfyui_available():
        pytest.skip("needs ComfyUI (COMFYUI_DIR)")

    def add(s):
        from support import tiny_ltx2 as t2

        d = tmp_path_factory.mktemp("model_node")
        s.add_model("diffusion_models", LTXV, tiny_ltxv_path)
        s.add_model("diffusion_models", WAN_HIGH, t2.build_tiny_wan(d / WAN_HIGH, seed=0))
        s.add_model("diffusion_models", WAN_LOW, t2.build_tiny_wan(d / WAN_LOW, seed=1))
        add_ltxav(s, d, LTXAV, AUDIO_VAE)

    yield from serve_models(add)


# --- building prompts ------------------------------------------------------------------------

def cond(seed: int, channels: int, nonce: int = 0) -> dict:
    return {"class_type": "CFGPTestConditioning", "inputs": {"seed": seed, "tokens": 8, "channels": channels,
                                                              "nonce": nonce}}


def parallel(g: dict, model: list, variant: str, tag: str, policy: list | None = None) -> list:
    """The model as the variant's sampler sees it: behind CFG Parallel (size 1 or 2), or as loaded."""
    if variant == "core":
        return model
    inputs = {"model": model, "parallel_size": 1 if variant == "s1" else 2, "devices": "cpu"}
    if policy is not None:
        inputs["policy"] = policy
    g[f"{tag}{variant}cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": inputs}
    return [f"{tag}{variant}cp", 0]


def save(g: dict, node: str, samples: list) -> str:
    g[node] = {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": f"latents/mn_{node}"}}
    return node


def ltxv_base(nonce: int = 0) -> dict:
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": LTXV, "weight_dtype": "default"}},
        "pos": cond(1, 32, nonce), "neg": cond(2, 32, nonce),
        "lat": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                                 "batch_size": 1}},
    }


def ksampler(model: list, latent: list, *, cfg: float = 3.0, seed: int = 7, steps: int = 3) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": latent, "denoise": 1.0}}


def wan_two_experts(nonce: int = 0, seed: int = 5, variants=VARIANTS) -> tuple[dict, dict[str, tuple[str, str]]]:
    """Wan 2.2's two-expert pattern: high-noise expert for steps 0-2 (noise added, leftover noise
    returned), low-noise expert from step 2 to the end (no noise added). {variant: (mid, final)}."""
    g = {
        "hi": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN_HIGH, "weight_dtype": "default"}},
        "lo": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN_LOW, "weight_dtype": "default"}},
        "hims": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["hi", 0], "shift": 8.0}},
        "loms": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["lo", 0], "shift": 8.0}},
        "pos": cond(1, 4096, nonce), "neg": cond(2, 4096, nonce),
        "lat": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                    "batch_size": 1}},
    }
    out = {}
    for v in variants:
        common = {"steps": 4, "cfg": 3.5, "sampler_name": "euler", "scheduler": "simple", "positive": ["pos", 0],
                  "negative": ["neg", 0], "noise_seed": seed}
        g[f"{v}high"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": parallel(g, ["hims", 0], v, "hi"), "add_noise": "enable", "latent_image": ["lat", 0],
            "start_at_step": 0, "end_at_step": 2, "return_with_leftover_noise": "enable"}}
        g[f"{v}low"] = {"class_type": "KSamplerAdvanced", "inputs": {
            **common, "model": parallel(g, ["loms", 0], v, "lo"), "add_noise": "disable",
            "latent_image": [f"{v}high", 0], "start_at_step": 2, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}}
        out[v] = (save(g, f"{v}mid", [f"{v}high", 0]), save(g, f"{v}out", [f"{v}low", 0]))
    return g, out


def compare(server, g: dict, saves: dict[str, str], label: str) -> torch.Tensor:
    """Run; size 2 == size 1 bit for bit; core within BOUND of size 1 (and not equal). Returns size 1's."""
    entry = server.run(g, timeout=600)
    return check_outputs(server, entry, saves, label)


def check_outputs(server, entry, saves: dict[str, str], label: str, distinct: bool = True) -> torch.Tensor:
    """``distinct``: core must not equal the node bit for bit (the batching rounding shows)."""
    s1, s2 = server.saved_latent(entry, saves["s1"]), server.saved_latent(entry, saves["s2"])
    assert torch.isfinite(s1).all() and s1.abs().max() > 0, label
    assert s1.shape == s2.shape and torch.equal(s1, s2), f"{label}: max |size2 - size1| = {(s1 - s2).abs().max()}"
    if "core" in saves:
        core = server.saved_latent(entry, saves["core"])
        diff = float((core - s1).abs().max())
        MEASURED[label] = diff
        print(f"\nMEASURED {label}: max |core - node at size 1| = {diff:.3g} "
              f"(max |out| {float(s1.abs().max()):.3g})")
        assert diff <= BOUND, f"{label}: core and the node at size 1 differ by {diff}"
        assert not (distinct and torch.equal(core, s1)), f"{label}: bit-identical to core: did the node run the branches apart?"
    return s1


# --- KSampler ----------------------------------------------------------------------------------

def test_ksampler_graph(server):
    g = ltxv_base()
    g["full"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    g["part"] = {"class_type": "SolidMask", "inputs": {"value": 0.3, "width": 32, "height": 64}}
    g["mask"] = {"class_type": "MaskComposite", "inputs": {"destination": ["full", 0], "source": ["part", 0],
                                                            "x": 0, "y": 0, "operation": "multiply"}}
    g["mlat"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["lat", 0], "mask": ["mask", 0]}}
    plain, masked = {}, {}
    for v in VARIANTS:
        g[f"{v}ks"] = ksampler(parallel(g, ["unet", 0], v, "a"), ["lat", 0])
        g[f"{v}mks"] = ksampler(parallel(g, ["unet", 0], v, "a"), ["mlat", 0], seed=8)
        plain[v], masked[v] = save(g, f"{v}o", [f"{v}ks", 0]), save(g, f"{v}mo", [f"{v}mks", 0])
    entry = server.run(g, timeout=600)
    out = check_outputs(server, entry, plain, "KSampler")
    assert out.shape == (1, 128, 2, 2, 2)
    # with a noise mask the tiny LTX-Video's per-token timesteps happen to round alike batched and apart
    check_outputs(server, entry, masked, "KSampler + SetLatentNoiseMask", distinct=False)


# --- KSamplerAdvanced, two experts ---------------------------------------------------------------

def test_two_expert_ksampler_advanced(server):
    g, saves = wan_two_experts()
    entry = server.run(g, timeout=600)
    mid = check_outputs(server, entry, {v: saves[v][0] for v in VARIANTS}, "Wan 2.2-style high-noise expert "
                                                                           "(leftover noise)")
    out = check_outputs(server, entry, {v: saves[v][1] for v in VARIANTS}, "Wan 2.2-style two experts")
    assert out.shape == (1, 16, 2, 4, 4) and not torch.equal(mid, out)
    assert mid.std() > 2 * out.std(), "the high-noise expert's output should still hold noise"


# --- CFGGuider, BasicGuider, DualCFGGuider ---------------------------------------------------------

def custom_chain(g: dict, guider: dict, tag: str, sigmas_model: list) -> str:
    g[f"{tag}g"] = guider
    g[f"{tag}x"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["noise", 0], "guider": [f"{tag}g", 0], "sampler": ["ksel", 0], "sigmas": ["sig", 0],
        "latent_image": ["lat", 0]}}
    return save(g, f"{tag}o", [f"{tag}x", 0])


def custom_base() -> dict:
    g = ltxv_base()
    g["mid"] = cond(3, 32)
    g["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 9}}
    g["ksel"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["sig"] = {"class_type": "BasicScheduler", "inputs": {"model": ["unet", 0], "scheduler": "simple", "steps": 3,
                                                           "denoise": 1.0}}
    return g


def test_cfg_guider_and_basic_guider(server):
    g = custom_base()
    cfg, basic = {}, {}
    for v in VARIANTS:
        m = parallel(g, ["unet", 0], v, "c")
        cfg[v] = custom_chain(g, {"class_type": "CFGGuider", "inputs": {
            "model": m, "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 4.0}}, f"{v}cfg", m)
        basic[v] = custom_chain(g, {"class_type": "BasicGuider", "inputs": {"model": m, "conditioning": ["pos", 0]}},
                                f"{v}basic", m)
    entry = server.run(g, timeout=600)
    check_outputs(server, entry, cfg, "CFGGuider")
    # one branch: the pack's forward is core's forward, so core equals it bit for bit here
    s1, core = server.saved_latent(entry, basic["s1"]), server.saved_latent(entry, basic["core"])
    assert torch.equal(s1, server.saved_latent(entry, basic["s2"])) and torch.equal(s1, core)


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_guider(server, style):
    g = custom_base()
    saves = {}
    for v in VARIANTS:
        m = parallel(g, ["unet", 0], v, "d")
        saves[v] = custom_chain(g, {"class_type": "DualCFGGuider", "inputs": {
            "model": m, "cond1": ["pos", 0], "cond2": ["mid", 0], "negative": ["neg", 0], "cfg_conds": 4.0,
            "cfg_cond2_negative": 2.5, "style": style}}, f"{v}dual", m)
    compare(server, g, saves, f"DualCFGGuider {style}")


def test_connected_policy_replaces_the_sampler_cfg(server):
    g = ltxv_base()
    g["pol"] = {"class_type": "CFGPolicyBuilder", "inputs": {
        "preset": "standard_cfg", "cfg": 5.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
        "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7,
        "video_skip_step": 0, "audio_cfg": 3.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 1.0,
        "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0"}}
    g["pk"] = ksampler(parallel(g, ["unet", 0], "s2", "p", policy=["pol", 0]), ["lat", 0], cfg=3.0)
    g["rk"] = ksampler(parallel(g, ["unet", 0], "s1", "r"), ["lat", 0], cfg=5.0)
    save(g, "po", ["pk", 0])
    save(g, "ro", ["rk", 0])
    entry = server.run(g, timeout=600)
    assert torch.equal(server.saved_latent(entry, "po"), server.saved_latent(entry, "ro"))


def _ltxav() -> bool:
    from support.tiny_ltx2 import ltxav_available

    return comfyui_available() and ltxav_available()


@pytest.mark.skipif(not _ltxav(), reason="[needs ComfyUI 0.29] LTX-2 audio+video nodes and model")
def test_ltx2_audio_video_cfg_guider(server):
    """An audio+video latent (packed by core's sample(), nested again for the branches) through
    CFGGuider: with the guider's cfg, and with the LTX-2 four-pass policy connected."""
    g = {
        "unet": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": LTXAV}},
        "pos": cond(1, 64), "neg": cond(2, 64),
        "vlat": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                                  "batch_size": 1}},
        "avae": {"class_type": "LTXVAudioVAELoader", "inputs": {"ckpt_name": AUDIO_VAE}},
        "alat": {"class_type": "LTXVEmptyLatentAudio", "inputs": {"frames_number": 9, "frame_rate": 25,
                                                                  "batch_size": 1, "audio_vae": ["avae", 0]}},
        "lat": {"class_type": "LTXVConcatAVLatent", "inputs": {"video_latent": ["vlat", 0],
                                                               "audio_latent": ["alat", 0]}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 9}},
        "ksel": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sig": {"class_type": "BasicScheduler", "inputs": {"model": ["unet", 0], "scheduler": "simple", "steps": 3,
                                                           "denoise": 1.0}},
        "pol": {"class_type": "CFGPolicyBuilder", "inputs": {
            "preset": "ltx2_multimodal", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False,
            "zero_init_steps": 0, "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 3.0,
            "video_rescale": 0.7, "video_skip_step": 0, "audio_cfg": 7.0, "audio_stg": 1.0, "audio_stg_blocks": "1",
            "audio_modality": 3.0, "audio_rescale": 0.7, "audio_skip_step": 0,
            "custom_branches": "negative:negative:3.0"}},
    }
    plain, ltx2 = {}, {}
    for v in VARIANTS:
        for saves, policy in ((plain, None), (ltx2, ["pol", 0])):
            if policy is not None and v == "core":
                continue
            tag = f"{v}{'ltx' if policy else 'cfg'}"
            m = parallel(g, ["unet", 0], v, tag, policy=policy)
            out = custom_chain(g, {"class_type": "CFGGuider", "inputs": {
                "model": m, "positive": ["pos", 0], "negative": ["neg", 0], "cfg": 3.0}}, tag, m)
            samples = g.pop(out)["inputs"]["samples"]  # a nested latent: SaveLatent takes its parts
            g[f"{tag}sep"] = {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": samples}}
            saves[v] = (save(g, f"{tag}vid", [f"{tag}sep", 0]), save(g, f"{tag}aud", [f"{tag}sep", 1]))
    entry = server.run(g, timeout=600)
    for part, label in ((0, "video"), (1, "audio")):
        check_outputs(server, entry, {v: s[part] for v, s in plain.items()}, f"LTX-2 CFGGuider {label}")
        check_outputs(server, entry, {v: s[part] for v, s in ltx2.items()}, f"LTX-2 four-pass policy {label}")


# --- refused before sampling -----------------------------------------------------------------------

def test_unmappable_guider_is_refused(server):
    g = custom_base()
    m = parallel(g, ["unet", 0], "s2", "x")
    g["empty"] = cond(4, 32)
    custom_chain(g, {"class_type": "PerpNegGuider", "inputs": {
        "model": m, "positive": ["pos", 0], "negative": ["neg", 0], "empty_conditioning": ["empty", 0], "cfg": 4.0,
        "neg_scale": 1.0}}, "pn", m)
    err = server.run_failing(g)
    assert "cannot run the guider Guider_PerpNeg" in err and "KSampler" in err, err


def test_cfg_function_patch_on_another_policy_is_refused(server):
    """RescaleCFG composes with the sampler's CFG (test_guidance_nodes.py); on a connected policy
    with another formula it is a second CFG rule: refused, naming the node the user has."""
    g = ltxv_base()
    g["pol"] = {"class_type": "CFGPolicyBuilder", "inputs": {
        "preset": "custom", "cfg": 5.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
        "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7,
        "video_skip_step": 0, "audio_cfg": 3.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 1.0,
        "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0"}}
    g["cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["unet", 0], "parallel_size": 2,
                                                             "devices": "cpu", "policy": ["pol", 0]}}
    g["rs"] = {"class_type": "RescaleCFG", "inputs": {"model": ["cp", 0], "multiplier": 0.7}}  # after the node
    g["ks"] = ksampler(["rs", 0], ["lat", 0])
    save(g, "o", ["ks", 0])
    err = server.run_failing(g)
    assert "RescaleCFG (sampler_cfg_function)" in err and "the CFG Parallel node" in err, err
    assert "Multi-Branch Guider" not in err, err
    g["rs"]["inputs"]["model"], g["cp"]["inputs"]["model"] = ["unet", 0], ["rs", 0]  # before the node
    g["ks"]["inputs"]["model"] = ["cp", 0]
    err = server.run_failing(g)
    assert err.startswith("CFGParallelMultiGPU_Model") and "RescaleCFG" in err and "the CFG Parallel node" in err, err


def test_ltx2_policy_on_a_wan_model_is_refused_at_the_node(server):
    g, _ = wan_two_experts(variants=())
    g["pol"] = {"class_type": "CFGPolicyBuilder", "inputs": {
        "preset": "ltx2_multimodal", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False,
        "zero_init_steps": 0, "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 3.0,
        "video_rescale": 0.7, "video_skip_step": 0, "audio_cfg": 7.0, "audio_stg": 1.0, "audio_stg_blocks": "1",
        "audio_modality": 3.0, "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0"}}
    g["cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["hims", 0], "parallel_size": 2,
                                                             "devices": "cpu", "policy": ["pol", 0]}}
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["cp", 0], "seed": 1, "steps": 2, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}}
    save(g, "o", ["ks", 0])
    err = server.run_failing(g)
    assert err.startswith("CFGParallelMultiGPU_Model") and "needs an LTX model" in err, err


# --- several models held by the ranks --------------------------------------------------------------

def test_two_experts_load_once_across_three_prompts(server):
    server.run({"1": {"class_type": "CFGParallelGroupStatus", "inputs": {"shutdown": True}}}, timeout=120)
    for seed in (11, 12, 13):  # a new noise seed: ComfyUI runs the samplers again, the loaders are cached
        g, saves = wan_two_experts(seed=seed, variants=("s2",))
        entry = server.run(g, timeout=600)
        assert torch.isfinite(server.saved_latent(entry, saves["s2"][1])).all()
    ranks = server.group_status()["last_job"]["per_rank"]
    assert len(ranks) == 2
    for r, summary in enumerate(ranks):
        loads = summary["model_loads"]
        # the two experts, one load each over 3 prompts x 2 samplings; the last job reused its patcher
        assert sorted(loads.values()) == [1, 1], (r, loads)
        assert set(summary["resident_models"]) == set(loads) and not summary["evicted_models"], (r, summary)
        assert summary["model_reloaded"] is False and summary["base_loaded"] is False, (r, summary)


def test_other_sampling_wrappers_are_refused(server):
    """EasyCache hooks the model through its own sampling wrappers, which would run in ComfyUI
    but not on the ranks: refused after the node (at sampling) and before it (at the node)."""
    g = ltxv_base()
    g["cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["unet", 0], "parallel_size": 2,
                                                             "devices": "cpu"}}
    g["ec"] = {"class_type": "EasyCache", "inputs": {"model": ["cp", 0], "reuse_threshold": 0.2,
                                                     "start_percent": 0.15, "end_percent": 0.95, "verbose": False}}
    g["ks"] = ksampler(["ec", 0], ["lat", 0])
    save(g, "o", ["ks", 0])
    err = server.run_failing(g)
    assert err.startswith("KSampler") and "sampling wrappers of other nodes" in err and "easycache" in err, err
    g["ec"]["inputs"]["model"], g["cp"]["inputs"]["model"], g["ks"]["inputs"]["model"] = ["unet", 0], ["ec", 0], \
        ["cp", 0]
    err = server.run_failing(g)
    assert err.startswith("CFGParallelMultiGPU_Model") and "easycache" in err, err


# --- sequence_split on the node: cfg 1 on two ranks ---------------------------------------------

def test_sequence_split_uses_the_idle_rank_at_cfg_1(server):
    """KSampler at cfg 1 (one branch) on a Wan model: size 2 with the split off runs in ComfyUI
    (no group for one rank's work), equals size 1 bit for bit, and the console says so and names
    the setting that uses the other rank; with
    sequence_split auto both ranks split the branch (1 x 2), within 1e-5 of size 1."""
    g = {"hi": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN_HIGH, "weight_dtype": "default"}},
         "pos": cond(1, 4096, 11), "neg": cond(2, 4096, 11),
         "lat": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 48, "length": 5,
                                                                     "batch_size": 1}}}
    saves = {}
    for tag, size, split in (("s1", 1, "off"), ("s2", 2, "off"), ("auto", 2, "auto")):
        g[f"{tag}cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {
            "model": ["hi", 0], "parallel_size": size, "devices": "cpu", "sequence_split": split}}
        g[f"{tag}ks"] = ksampler([f"{tag}cp", 0], ["lat", 0], cfg=1.0, seed=9)
        saves[tag] = save(g, f"{tag}sq", [f"{tag}ks", 0])
    before = len(server.log_text())
    entry = server.run(g, timeout=600)
    check_outputs(server, entry, {"s1": saves["s1"], "s2": saves["s2"]}, "KSampler cfg 1, split off")
    s1, auto = server.saved_latent(entry, saves["s1"]), server.saved_latent(entry, saves["auto"])
    rel = float((auto.double() - s1.double()).norm() / s1.double().norm())
    print(f"\nMEASURED KSampler cfg 1, sequence_split auto (1 x 2): rel L2 {rel:.3g} against size 1")
    assert rel <= 1e-5
    log = server.log_text()[before:]
    assert "only 1 of the 2 ranks would work: it runs here in ComfyUI" in log, log[-3000:]
    assert "sequence_split auto splits Wan" in log, log[-3000:]
    assert "1 branch group(s) x sequence degree 2" in log, log[-3000:]


# --- a latent batch split over batch groups ---------------------------------------------------

def test_ksampler_batch_split(server):
    """batch_size 4 under KSampler (euler_ancestral: per-step noise), plain and with a noise mask:
    batch_split 2 on 2 ranks (2 groups x 1 rank, each rank both branches of 2 samples) against
    the whole batch at size 1, sample by sample within BOUND (a split is not bit-exact)."""
    g = ltxv_base()
    g["lat"]["inputs"]["batch_size"] = 4
    g["part"] = {"class_type": "SolidMask", "inputs": {"value": 0.3, "width": 32, "height": 64}}
    g["mlat"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["lat", 0], "mask": ["part", 0]}}
    saves = {}
    for tag, size, split in (("whole", 1, "off"), ("split", 2, "2")):
        g[f"{tag}cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {
            "model": ["unet", 0], "parallel_size": size, "devices": "cpu", "batch_split": split}}
        for latent, suffix in ((["lat", 0], ""), (["mlat", 0], "m")):
            node = ksampler([f"{tag}cp", 0], latent)
            node["inputs"]["sampler_name"] = "euler_ancestral"
            g[f"{tag}{suffix}ks"] = node
            saves[tag + suffix] = save(g, f"{tag}{suffix}bo", [f"{tag}{suffix}ks", 0])
    entry = server.run(g, timeout=600)
    for suffix in ("", "m"):
        whole, split = (server.saved_latent(entry, saves[t + suffix]) for t in ("whole", "split"))
        assert whole.shape == split.shape == (4, 128, 2, 2, 2)
        assert not torch.equal(whole[0], whole[1])  # four samples, four noises
        diff = max(float((w - s).abs().max()) for w, s in zip(whole, split))
        print(f"\nMEASURED batch split{' + mask' if suffix else ''}: max |split - whole| per sample = {diff:.3g}")
        assert diff <= BOUND, diff


def guider_sampling(g: dict, tag: str, size: int, split: str) -> list:
    """CFGPolicy Builder (standard CFG 3) + Multi-Branch Guider + SamplerCustomAdvanced on "lat"."""
    from support.tiny_ltx2 import POLICY_DEFAULTS

    g[f"{tag}pol"] = {"class_type": "CFGPolicyBuilder", "inputs": {**POLICY_DEFAULTS, "preset": "standard_cfg"}}
    g[f"{tag}gd"] = {"class_type": "CFGParallelMultiGPU_MultiBranchGuider", "inputs": {
        "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0], "policy": [f"{tag}pol", 0],
        "parallel_size": size, "devices": "cpu", "plan": "cost_balanced", "keep_model_loaded": True,
        "step_timeout_s": 120.0, "batch_split": split}}
    g[f"{tag}noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
    g[f"{tag}smp"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
    g[f"{tag}sch"] = {"class_type": "BasicScheduler", "inputs": {"model": ["unet", 0], "scheduler": "simple",
                                                                 "steps": 3, "denoise": 1.0}}
    g[f"{tag}sca"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": [f"{tag}noise", 0], "guider": [f"{tag}gd", 0], "sampler": [f"{tag}smp", 0],
        "sigmas": [f"{tag}sch", 0], "latent_image": ["lat", 0]}}
    return [f"{tag}sca", 0]


def test_ksampler_advanced_and_guider_batch_split(server):
    """batch_size 3 (uneven: 2 + 1) under KSamplerAdvanced behind CFG Parallel, and under the
    Multi-Branch Guider with SamplerCustomAdvanced: batch_split 2 on 2 ranks against the whole
    batch at size 1, sample by sample within BOUND; the layout line names the two groups."""
    g = ltxv_base()
    g["lat"]["inputs"]["batch_size"] = 3
    saves = {}
    for tag, size, split in (("whole", 1, "off"), ("split", 2, "2")):
        g[f"{tag}cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {
            "model": ["unet", 0], "parallel_size": size, "devices": "cpu", "batch_split": split}}
        node = ksampler([f"{tag}cp", 0], ["lat", 0])
        node["class_type"] = "KSamplerAdvanced"
        seed = node["inputs"].pop("seed")
        node["inputs"].pop("denoise")
        node["inputs"].update(add_noise="enable", noise_seed=seed, start_at_step=0, end_at_step=10000,
                              return_with_leftover_noise="disable", sampler_name="euler_ancestral")
        g[f"{tag}ksa"] = node
        saves[f"{tag}ksa"] = save(g, f"{tag}ksabo", [f"{tag}ksa", 0])
        saves[f"{tag}gd"] = save(g, f"{tag}gdbo", guider_sampling(g, tag, size, split))
    before = len(server.log_text())
    entry = server.run(g, timeout=600)
    for sampler in ("ksa", "gd"):
        whole, split = (server.saved_latent(entry, saves[t + sampler]) for t in ("whole", "split"))
        assert whole.shape == split.shape == (3, 128, 2, 2, 2)
        assert not torch.equal(whole[0], whole[2])
        diff = max(float((w - s).abs().max()) for w, s in zip(whole, split))
        print(f"\nMEASURED batch split 2 + 1 under {sampler}: max |split - whole| per sample = {diff:.3g}")
        assert diff <= BOUND, diff
    assert "2 batch group(s)" in server.log_text()[before:], server.log_text()[before:][-3000:]
