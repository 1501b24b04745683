"""Graphs as users build them, through a real ComfyUI server: size 2 == size 1 bit for bit.

Each prompt holds the same sampling chain twice, once with the Multi-Branch Guider at
parallel size 1 and once at size 2 (a persistent 2-rank gloo group), each ending in core
SaveLatent; the saved latents must be torch.equal. Tiny random-weight models built with
ComfyUI's classes (support.tiny_families, support.tiny_ltx2), loaded by core loaders:

* Wan 2.1 t2v (UNETLoader) behind ModelSamplingSD3, uni_pc;
* Flux (UNETLoader) behind ModelSamplingFlux, FluxGuidance on the positive ([needs ComfyUI
  0.29]: 0.3.75's detection fixes 24 heads, so no Flux is tiny there);
* SD 1.5 through CheckpointLoaderSimple, dpmpp_2m / karras;
* a LoRA stack (two LoraLoaderModelOnly) with strengths changed between prompts, and
  strength 0 (core returns the model untouched: equals the plain model), batch size 2;
* LTX-Video keyframes: LTXVAddGuide on the first and last frame, LTXVCropGuides after
  ([needs ComfyUI 0.29]: 0.3.75's VAELoader ignores a file's config, so no tiny LTX VAE);
* LTX-2 audio+video as in the LTX-2.3 blueprints of ComfyUI 0.29 (CheckpointLoaderSimple,
  LTXVConditioning, text-to-video, image-to-video with LTXVPreprocess +
  LTXVImgToVideoInplace's noise mask, first/last-frame LTXVAddGuide + LTXVCropGuides), with
  the stage-1 sampler, sigmas and strengths read from the installed blueprints at test time.
"""
from __future__ import annotations

import pytest
import torch

from support.blueprints import Blueprint, api_node, find_blueprint
from support.paths import COMFYUI_DIR, comfyui_available

pytestmark = pytest.mark.server

NEEDS_029 = "[needs ComfyUI 0.29]"
WAN, FLUX, SD_CKPT, LTXAV_CKPT, LTX_VAE, LORA2 = (
    "cfgp_tiny_wan.safetensors", "cfgp_tiny_flux.safetensors", "cfgp_tiny_sd15.safetensors",
    "cfgp_tiny_ltxav.safetensors", "cfgp_tiny_ltx_vae.safetensors", "cfgp_tiny_lora2.safetensors")
IMAGE, AUDIO_VAE = "cfgp_frame.png", "tiny_ltx_audio_vae.safetensors"

STANDARD = {
    "preset": "standard_cfg", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
    "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7,
    "video_skip_step": 0, "audio_cfg": 3.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 1.0,
    "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0",
}
# LTX-2 defaults: video cfg 3 / audio cfg 7, STG on a block, modality-isolated pass, rescale 0.7: 4 passes
LTX2 = {**STANDARD, "preset": "ltx2_multimodal", "audio_cfg": 7.0, "video_modality": 3.0, "audio_modality": 3.0}


def _ltxav() -> bool:
    return comfyui_available() and (COMFYUI_DIR / "comfy" / "ldm" / "lightricks" / "av_model.py").is_file()


def _flux_ok() -> bool:
    if not comfyui_available():
        return False
    from support.tiny_families import tiny_flux_supported

    return tiny_flux_supported()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_ltxv_path, tiny_lora_path):
    """A real ComfyUI server for this module (support.servers), with its tiny models and inputs."""
    from support.servers import add_ltxav, serve_models

    def add(s):
        from support import tiny_families as tf
        from support import tiny_ltx2 as t2
        from devkit.tiny_models import build_tiny_lora

        d = tmp_path_factory.mktemp("real_graphs")
        s.add_model("diffusion_models", "tiny_ltxv.safetensors", tiny_ltxv_path)
        s.add_model("loras", "tiny_lora.safetensors", tiny_lora_path)
        s.add_model("diffusion_models", WAN, t2.build_tiny_wan(d / WAN))
        s.add_model("checkpoints", SD_CKPT, tf.build_tiny_sd15(d / SD_CKPT, prefix="model.diffusion_model."))
        s.add_model("vae", LTX_VAE, tf.build_tiny_ltx_vae_32x(d / LTX_VAE))
        s.add_model("loras", LORA2, build_tiny_lora(d / LORA2, tiny_ltxv_path, seed=3, rank=2, targets=(
            "transformer_blocks.0.attn1.to_k", "transformer_blocks.1.attn1.to_q", "transformer_blocks.1.ff.net.2")))
        tf.write_test_image(s.input_dir / IMAGE)
        if _flux_ok():
            s.add_model("diffusion_models", FLUX, tf.build_tiny_flux(d / FLUX))
        add_ltxav(s, d, LTXAV_CKPT, AUDIO_VAE)

    yield from serve_models(add)


# --- building prompts ------------------------------------------------------------------------

def cond(seed: int, channels: int, tokens: int = 8) -> dict:
    return {"class_type": "CFGPTestConditioning", "inputs": {"seed": seed, "tokens": tokens, "channels": channels}}


def sampling_pair(g: dict, *, model, positive, negative, latent, sampler: str | dict, sigmas, policy: dict,
                  tag: str = "", seed: int = 42, post=None) -> dict[int, list[str]]:
    """Add the chain at size 1 and at size 2: policy -> guider -> SamplerCustomAdvanced [-> post] -> SaveLatent.

    ``sampler``: a KSamplerSelect name or an API node giving a SAMPLER. ``post(g, samples_ref,
    prefix) -> [SaveLatent ids]`` replaces the plain SaveLatent (e.g. to separate audio and
    video). Returns {size: [SaveLatent ids]}."""
    g[f"{tag}noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}}
    g[f"{tag}ksel"] = sampler if isinstance(sampler, dict) else {
        "class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    g[f"{tag}pol"] = {"class_type": "CFGPolicyBuilder", "inputs": dict(policy)}
    out = {}
    for size in (1, 2):
        t = f"{tag}s{size}"
        g[f"{t}guider"] = {"class_type": "MultiBranchGuider", "inputs": {
            "model": model, "positive": positive, "negative": negative, "policy": [f"{tag}pol", 0],
            "parallel_size": size, "devices": "cpu", "plan": "cost_balanced", "keep_model_loaded": True,
            "step_timeout_s": 120.0}}
        g[f"{t}sample"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": [f"{tag}noise", 0], "guider": [f"{t}guider", 0], "sampler": [f"{tag}ksel", 0],
            "sigmas": sigmas, "latent_image": latent}}
        prefix = f"latents/cfgp_graph_{tag}{size}"
        if post is None:
            g[f"{t}save"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{t}sample", 0],
                                                                    "filename_prefix": prefix}}
            out[size] = [f"{t}save"]
        else:
            out[size] = post(g, [f"{t}sample", 0], t, prefix)
    return out


def scheduler(model, name: str = "simple", steps: int = 3) -> dict:
    return {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": name, "steps": steps,
                                                       "denoise": 1.0}}


def run_and_compare(server, g: dict, pairs: dict[int, list[str]]) -> list[torch.Tensor]:
    """Run the prompt; assert every size-2 output equals its size-1 twin; return the size-1 outputs."""
    entry = server.run(g, timeout=600)
    outs = []
    for one, two in zip(pairs[1], pairs[2]):
        a, b = server.saved_latent(entry, one), server.saved_latent(entry, two)
        assert torch.isfinite(a).all(), one
        assert a.shape == b.shape and torch.equal(a, b), (
            f"{one} vs {two}: max |size2 - size1| = {(a - b).abs().max() if a.shape == b.shape else a.shape}")
        outs.append(a)
    return outs


# --- model families ----------------------------------------------------------------------------

def test_wan_with_model_sampling_sd3(server):
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": WAN, "weight_dtype": "default"}},
        "m": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "2": cond(1, 4096), "3": cond(2, 4096),
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                  "batch_size": 1}},
        "8": scheduler(["m", 0]),
    }
    pairs = sampling_pair(g, model=["m", 0], positive=["2", 0], negative=["3", 0], latent=["4", 0],
                          sampler="uni_pc", sigmas=["8", 0], policy={**STANDARD, "cfg": 5.0})
    (out,) = run_and_compare(server, g, pairs)
    assert out.shape == (1, 16, 2, 4, 4)


@pytest.mark.skipif(not _flux_ok(), reason=f"{NEEDS_029} a tiny Flux: ComfyUI 0.3.75's model detection fixes "
                                           f"24 heads of 128, i.e. a 3072-wide model (~0.4 B parameters)")
def test_flux_with_model_sampling_flux_and_flux_guidance(server):
    from support.tiny_families import FLUX_CONTEXT_CHANNELS

    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX, "weight_dtype": "default"}},
        "m": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["1", 0], "max_shift": 1.15, "base_shift": 0.5,
                                                            "width": 32, "height": 32}},
        "2": cond(1, FLUX_CONTEXT_CHANNELS), "3": cond(2, FLUX_CONTEXT_CHANNELS),
        "fg": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["2", 0], "guidance": 3.5}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "8": scheduler(["m", 0]),
    }
    pairs = sampling_pair(g, model=["m", 0], positive=["fg", 0], negative=["3", 0], latent=["4", 0],
                          sampler="euler", sigmas=["8", 0], policy={**STANDARD, "cfg": 2.0})
    (out,) = run_and_compare(server, g, pairs)
    assert out.shape == (1, 16, 4, 4)


def test_sd15_checkpoint(server):
    from support.tiny_families import SD15_CONTEXT_CHANNELS

    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD_CKPT}},
        "2": cond(1, SD15_CONTEXT_CHANNELS), "3": cond(2, SD15_CONTEXT_CHANNELS),
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "8": scheduler(["1", 0], "karras", steps=2),
    }
    pairs = sampling_pair(g, model=["1", 0], positive=["2", 0], negative=["3", 0], latent=["4", 0],
                          sampler="dpmpp_2m", sigmas=["8", 0], policy={**STANDARD, "cfg": 7.0})
    (out,) = run_and_compare(server, g, pairs)
    assert out.shape == (1, 4, 8, 8)


def _ltxv_base(g: dict, model_ref, batch: int = 1) -> None:
    g.update({
        "2": cond(1, 32), "3": cond(2, 32),
        "4": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                               "batch_size": batch}},
        "8": scheduler(model_ref),
    })


def test_lora_stack_strength_changes_between_prompts_batch_of_two(server):
    def chain(g, strengths, tag):
        model = ["1", 0]
        if strengths is not None:
            g[f"{tag}l1"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": ["1", 0], "lora_name": "tiny_lora.safetensors", "strength_model": strengths[0]}}
            g[f"{tag}l2"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
                "model": [f"{tag}l1", 0], "lora_name": LORA2, "strength_model": strengths[1]}}
            model = [f"{tag}l2", 0]
        return sampling_pair(g, model=model, positive=["2", 0], negative=["3", 0], latent=["4", 0],
                             sampler="euler", sigmas=["8", 0], policy=STANDARD, tag=tag)

    def prompt(first, second, nonce):
        g = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_ltxv.safetensors",
                                                          "weight_dtype": "default"}}}
        _ltxv_base(g, ["1", 0], batch=2)
        g["2"]["inputs"]["nonce"] = g["3"]["inputs"]["nonce"] = nonce
        a, b = chain(g, first, "a"), chain(g, second, "b")
        return run_and_compare(server, g, {size: a[size] + b[size] for size in (1, 2)})

    base, stacked = prompt(None, (1.0, 0.5), 1)
    changed, zero = prompt((0.25, 0.5), (0.0, 0.0), 2)  # same files, a strength changed: must reach the ranks
    assert base.shape[0] == 2 and not torch.equal(base[0], base[1])
    assert not torch.equal(stacked, base) and not torch.equal(changed, stacked)
    assert torch.equal(zero, base)  # strength 0: core hands on the model untouched


@pytest.mark.skipif(not _ltxav(), reason=f"{NEEDS_029} a tiny LTX VAE to encode the keyframes: 0.3.75's VAELoader "
                                          f"ignores the file's metadata config, so its LTX VAE is full size")
def test_ltxv_keyframes_add_guide_and_crop_guides(server):
    """First and last frame as LTXVAddGuide keyframes, LTXVCropGuides after sampling (LTX-Video model)."""
    g = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_ltxv.safetensors", "weight_dtype": "default"}},
         "v": {"class_type": "VAELoader", "inputs": {"vae_name": LTX_VAE}},
         "im": {"class_type": "LoadImage", "inputs": {"image": IMAGE}}}
    _ltxv_base(g, ["1", 0])
    g["ga"] = {"class_type": "LTXVAddGuide", "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["v", 0],
                                                         "latent": ["4", 0], "image": ["im", 0], "frame_idx": 0,
                                                         "strength": 0.7}}
    g["gb"] = {"class_type": "LTXVAddGuide", "inputs": {"positive": ["ga", 0], "negative": ["ga", 1], "vae": ["v", 0],
                                                         "latent": ["ga", 2], "image": ["im", 0], "frame_idx": -1,
                                                         "strength": 0.7}}

    def crop(g, samples, t, prefix):
        g[f"{t}crop"] = {"class_type": "LTXVCropGuides", "inputs": {"positive": ["gb", 0], "negative": ["gb", 1],
                                                                    "latent": samples}}
        g[f"{t}save"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{t}crop", 2], "filename_prefix": prefix}}
        return [f"{t}save"]

    pairs = sampling_pair(g, model=["1", 0], positive=["gb", 0], negative=["gb", 1], latent=["gb", 2],
                          sampler="euler", sigmas=["8", 0], policy=STANDARD, post=crop)
    (out,) = run_and_compare(server, g, pairs)
    assert out.shape == (1, 128, 2, 2, 2)  # the guide frames are cropped off again


# --- LTX-2 as in the LTX-2.3 blueprints of ComfyUI 0.29 ------------------------------------------

needs_ltx2 = pytest.mark.skipif(not _ltxav(), reason=f"{NEEDS_029} LTX-2 audio+video (comfy/ldm/lightricks/"
                                                     f"av_model.py) and its LTX-2.3 blueprints")


def blueprint(pattern: str) -> Blueprint:
    path = find_blueprint(pattern)
    if path is None:
        pytest.skip(f"{NEEDS_029} no blueprints/{pattern} in {COMFYUI_DIR}")
    return Blueprint(path)


def _ltx2_base(g: dict, bp: Blueprint) -> None:
    """Tiny LTX-2 checkpoint, conditioning through LTXVConditioning at the blueprint's frame rate."""
    frame_rate = bp.of_type("LTXVConditioning")[0]["widgets_values"][0]
    g.update({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": LTXAV_CKPT}},
        "v": {"class_type": "VAELoader", "inputs": {"vae_name": LTX_VAE}},
        "2": cond(1, 64), "3": cond(2, 64),
        "c": {"class_type": "LTXVConditioning", "inputs": {"positive": ["2", 0], "negative": ["3", 0],
                                                           "frame_rate": float(frame_rate)}},
        "4": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                               "batch_size": 1}},
        "av_vae": {"class_type": "LTXVAudioVAELoader", "inputs": {"ckpt_name": AUDIO_VAE}},
        "a": {"class_type": "LTXVEmptyLatentAudio", "inputs": {"frames_number": 9, "frame_rate": float(frame_rate),
                                                               "batch_size": 1, "audio_vae": ["av_vae", 0]}},
    })


def _ltx2_sample(server, g: dict, sampling: dict, video_latent, positive=("c", 0), negative=("c", 1), crop=False,
                 policies=(("x", LTX2),)) -> dict[int, list[str]]:
    """Concat with the audio latent, sample with a blueprint sampling's sampler node and sigmas
    (once per policy), separate, [crop the guides], save video and audio."""
    sampler = sampling["sampler"]
    sampler = api_node(sampler, server.object_info(sampler["type"])[sampler["type"]])
    g["av"] = {"class_type": "LTXVConcatAVLatent", "inputs": {"video_latent": video_latent, "audio_latent": ["a", 0]}}
    g["sig"] = {"class_type": "ManualSigmas", "inputs": {"sigmas": sampling["sigmas"]}}

    def post(g, samples, t, prefix):
        g[f"{t}sep"] = {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": samples}}
        video = [f"{t}sep", 0]
        if crop:
            g[f"{t}crop"] = {"class_type": "LTXVCropGuides", "inputs": {"positive": list(positive),
                                                                        "negative": list(negative), "latent": video}}
            video = [f"{t}crop", 2]
        g[f"{t}v"] = {"class_type": "SaveLatent", "inputs": {"samples": video, "filename_prefix": prefix + "_video"}}
        g[f"{t}a"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{t}sep", 1],
                                                             "filename_prefix": prefix + "_audio"}}
        return [f"{t}v", f"{t}a"]

    pairs = {1: [], 2: []}
    for tag, policy in policies:
        got = sampling_pair(g, model=["1", 0], positive=list(positive), negative=list(negative), latent=["av", 0],
                            sampler=sampler, sigmas=["sig", 0], policy=policy, tag=tag, post=post)
        for size in (1, 2):
            pairs[size] += got[size]
    return pairs


def blueprint_cfg(bp: Blueprint, sampling: dict) -> dict:
    """Standard CFG at the scale of the blueprint's CFGGuider for that sampling (1 in the LTX-2.3 ones)."""
    return {**STANDARD, "cfg": float(bp.upstream(sampling["node"], "guider")["widgets_values"][0])}


@needs_ltx2
def test_ltx2_text_to_video_as_in_the_blueprint(server):
    """Stage 1 of the blueprint: its sampler (euler_ancestral_cfg_pp), sigmas and CFGGuider scale
    (1: the *_cfg_pp sampler makes the negative run too, so both ranks work)."""
    bp = blueprint("Text to Video (LTX-2.3).json")
    stage1 = bp.samplings()[0]
    g = {}
    _ltx2_base(g, bp)
    pairs = _ltx2_sample(server, g, stage1, ["4", 0], policies=(("x", blueprint_cfg(bp, stage1)),))
    video, audio = run_and_compare(server, g, pairs)
    assert video.shape == (1, 128, 2, 2, 2) and audio.shape[:2] == (1, 8)


@needs_ltx2
def test_ltx2_image_to_video_as_in_the_blueprint(server):
    """LTXVPreprocess + LTXVImgToVideoInplace at the blueprint's stage-1 strength (a partial noise
    mask on the first latent frame), the LTX-2 four-pass policy, the blueprint's stage-1 sampler and,
    to keep it short, its 3-step distilled stage-2 sigmas."""
    bp = blueprint("Image to Video (LTX-2.3).json")
    stage1, stage2 = bp.samplings()[0], bp.samplings()[-1]
    inplace = bp.upstream_of_type(stage1["node"], "LTXVImgToVideoInplace")
    assert inplace is not None, "the blueprint's stage 1 no longer goes through LTXVImgToVideoInplace"
    strength, bypass = inplace["widgets_values"][:2]
    assert 0.0 < float(strength) < 1.0 and not bypass
    preprocess = bp.of_type("LTXVPreprocess")[0]
    g = {"im": {"class_type": "LoadImage", "inputs": {"image": IMAGE}}}
    _ltx2_base(g, bp)
    g["pp"] = {"class_type": "LTXVPreprocess", "inputs": {"image": ["im", 0],
                                                          "img_compression": preprocess["widgets_values"][0]}}
    g["i2v"] = {"class_type": "LTXVImgToVideoInplace", "inputs": {"vae": ["v", 0], "image": ["pp", 0],
                                                                  "latent": ["4", 0], "strength": float(strength),
                                                                  "bypass": False}}
    video, audio = run_and_compare(server, g, _ltx2_sample(server, g, {**stage1, "sigmas": stage2["sigmas"]},
                                                           ["i2v", 0]))
    assert video.shape == (1, 128, 2, 2, 2)


@needs_ltx2
def test_ltx2_first_last_frame_keyframes_as_in_the_blueprint(server):
    """Two LTXVAddGuide keyframes (first and last frame, the blueprint's strengths), its sampler
    node and sigmas, standard CFG 3 (two branches), LTXVCropGuides after."""
    bp = blueprint("First-Last-Frame to Video (LTX-2.3).json")
    guides = sorted((n["widgets_values"][:2] for n in bp.of_type("LTXVAddGuide")), key=lambda w: w[0] == -1)
    assert len(guides) == 2, guides
    g = {"im": {"class_type": "LoadImage", "inputs": {"image": IMAGE}}}
    _ltx2_base(g, bp)
    pos, neg, lat = ("c", 0), ("c", 1), ("4", 0)
    for i, (frame_idx, strength) in enumerate(guides):
        g[f"g{i}"] = {"class_type": "LTXVAddGuide", "inputs": {
            "positive": list(pos), "negative": list(neg), "vae": ["v", 0], "latent": list(lat), "image": ["im", 0],
            "frame_idx": int(frame_idx), "strength": float(strength)}}
        pos, neg, lat = (f"g{i}", 0), (f"g{i}", 1), (f"g{i}", 2)
    pairs = _ltx2_sample(server, g, bp.samplings()[0], list(lat), positive=pos, negative=neg, crop=True,
                         policies=(("x", STANDARD),))
    video, audio = run_and_compare(server, g, pairs)
    assert video.shape == (1, 128, 2, 2, 2)
