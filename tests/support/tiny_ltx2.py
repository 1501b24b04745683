"""Tiny LTX-2 (audio+video) models and inputs for tests, built with ComfyUI's own classes.

Needs a ComfyUI with LTX-2 (``comfy/ldm/lightricks/av_model.py``, e.g. 0.29); check
:func:`ltxav_available` first. Everything here is random-weight and a few hundred kB:

* :func:`build_tiny_ltxav` - a 3-block ``LTXAVModel`` (video 2 heads x 16, audio 2 heads x 8)
  saved as safetensors with the metadata ``config`` = ``{"transformer": {...}}``;
  ``comfy.sd.load_diffusion_model`` / core ``UNETLoader`` detect it as ``ltxav`` (the key
  ``audio_adaln_single.linear.weight`` is present) and build ``model_base.LTXAV``.
* :func:`tiny_av_conditioning` - CONDITIONING for it. ``LTXAV.extra_conds`` passes the
  text embedding through ``preprocess_text_embeds``, which leaves an already processed
  embedding alone when its width is ``2 * caption_channels`` (video half, audio half):
  so ``[1, tokens, 64]`` plus an integer ``attention_mask`` (a float mask breaks batched
  attention). ``CFGPTestConditioning`` with ``channels=64`` makes the same on a server.
* :func:`tiny_av_latent` - the packed audio+video LATENT that core ``LTXVConcatAVLatent``
  makes: ``NestedTensor(video [B,128,F,H,W], audio [B,8,T,16])``. The audio half is a zero
  latent made by core ``LTXVEmptyLatentAudio`` from the tiny audio VAE (or zeros of its shape).
* :func:`build_tiny_ltx_audio_vae` - an LTX audio VAE (ComfyUI's ``AudioVAE``: causal audio
  autoencoder 8 channels wide + a 5-stage vocoder, ~0.2 M parameters) that core
  ``LTXVAudioVAELoader`` loads from ``checkpoints`` (keys ``audio_vae.*`` / ``vocoder.*``,
  metadata ``config`` = ``{"audio_vae": ..., "vocoder": ...}``); ``LTXVEmptyLatentAudio`` gives
  the real LTX-2 audio latent shape ([B, 8, 25 per second, 16]) and ``LTXVAudioVAEDecode``
  a 16 kHz stereo waveform.
* :func:`build_tiny_ltx_vae` - an LTX video VAE (``VideoVAE``, one res block of 32 channels,
  128 latent channels) that core ``VAELoader`` loads (detected by
  ``decoder.up_blocks.0.res_blocks.0.conv1.conv.weight``, shaped by metadata
  ``{"vae": {...}}``). ``LTXVLatentUpsampler`` reads its ``per_channel_statistics``
  (random, positive std); ``VAEDecode`` decodes with it (no spatial/temporal upsampling at
  this size: one RGB frame per latent frame, one pixel per latent pixel).
* :func:`build_tiny_latent_upscaler` - an LTX spatial ``LatentUpsampler`` (x2, 32 mid
  channels) that core ``LatentUpscaleModelLoader`` loads (key
  ``post_upsample_res_blocks.0.conv2.bias``, metadata ``config``).
* :func:`build_tiny_wan` - a non-LTX model (Wan 2.1 t2v, 1 block, dim 128) that both 0.3.75
  and 0.29 detect from its weight shapes alone; for "wrong model" errors (never sampled).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .paths import COMFYUI_DIR, import_comfy
from devkit.tiny_models import init_weights

TINY_LTXAV_CONFIG = {
    "in_channels": 128,
    "audio_in_channels": 128,
    "cross_attention_dim": 32,
    "audio_cross_attention_dim": 16,
    "attention_head_dim": 16,
    "audio_attention_head_dim": 8,
    "num_attention_heads": 2,
    "audio_num_attention_heads": 2,
    "caption_channels": 32,
    "num_layers": 3,
    "connector_attention_head_dim": 8,
    "connector_num_attention_heads": 2,
    "connector_num_layers": 1,
}
AV_CONTEXT_CHANNELS = 2 * TINY_LTXAV_CONFIG["caption_channels"]  # processed embedding: video | audio
AUDIO_CHANNELS, AUDIO_FREQ_BINS = 8, 16  # LTXAVModel.num_audio_channels / audio_frequency_bins

TINY_LTX_VAE_CONFIG = {
    "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "blocks": [["res_x", 1]], "encoder_base_channels": 32, "decoder_base_channels": 32,
    "norm_layer": "pixel_norm", "patch_size": 1, "latent_log_var": "uniform", "causal_decoder": False,
}
# A tiny LTX video VAE whose decoder really has ComfyUI's LTX compression (8x in time, causal:
# 8n - 7 frames; 32x in space: three 2x2x2 depth-to-space steps and patch size 4), so core
# VAEDecodeTiled's blend (which assumes those ratios) fits its tiles; the res_x block comes first in
# the decoder, which is how ComfyUI tells an LTX VAE. No timestep conditioning:
# the decode adds no (unseeded) noise.
TINY_LTX_TILED_VAE_CONFIG = {
    "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
    "encoder_blocks": [["res_x", 1]], "decoder_blocks": [["compress_all", 1]] * 3 + [["res_x", 1]],
    "encoder_base_channels": 8, "decoder_base_channels": 8, "norm_layer": "pixel_norm", "patch_size": 4,
    "latent_log_var": "uniform", "causal_decoder": False, "timestep_conditioning": False,
    "spatial_padding_mode": "zeros",  # reflect padding refuses the 1-pixel-wide tiles a tiny latent can give
}
TINY_UPSCALER_CONFIG = {
    "_class_name": "LatentUpsampler", "in_channels": 128, "mid_channels": 32, "num_blocks_per_stage": 1,
    "dims": 3, "spatial_upsample": True, "temporal_upsample": False,
}
# LTX audio VAE (ComfyUI's AudioVAE: CausalAudioAutoencoder + Vocoder), tiny widths. The
# latent must fit the transformer: 8 channels x 16 frequency bins (mel_bins 64 / 4), and
# 25 latents per second (16 kHz, hop 160, 4x down) as the real one; the vocoder upsamples
# by 5*4*2*2*2 = 160 (one hop) to 16 kHz stereo.
TINY_AUDIO_VAE_CONFIG = {
    "audio_vae": {
        "model": {"params": {"sampling_rate": 16000, "ddconfig": {
            "double_z": True, "mel_bins": 64, "z_channels": AUDIO_CHANNELS, "resolution": 256,
            "downsample_time": False, "in_channels": 2, "out_ch": 2, "ch": 8, "ch_mult": [1, 2, 4],
            "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0, "mid_block_add_attention": False,
            "norm_type": "pixel", "causality_axis": "height"}}},
        "preprocessing": {"stft": {"filter_length": 1024, "hop_length": 160}},
    },
    "vocoder": {"resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]], "upsample_rates": [5, 4, 2, 2, 2],
                "upsample_kernel_sizes": [10, 8, 4, 4, 4], "upsample_initial_channel": 32, "stereo": True,
                "resblock": "1"},
}
TINY_WAN_CONFIG = {"model_type": "t2v", "dim": 128, "ffn_dim": 32, "num_heads": 1, "num_layers": 1,
                   "in_dim": 16, "out_dim": 16}


def ltxav_available(comfyui_dir=None) -> bool:
    """True when that ComfyUI (default: COMFYUI_DIR) has the LTX-2 audio+video model."""
    return (Path(comfyui_dir or COMFYUI_DIR) / "comfy" / "ldm" / "lightricks" / "av_model.py").is_file()


def _save(module_or_sd, path, metadata: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = module_or_sd if isinstance(module_or_sd, dict) else module_or_sd.state_dict()
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    return path


# --- the LTX-2 transformer ---------------------------------------------------------------

def tiny_ltxav_module(seed: int = 0, std: float = 0.2, **overrides):
    """The initialised LTXAVModel (torch module). std 0.2 (biases 0) makes the branches
    (negative, STG, modality-isolated) differ clearly while staying finite."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.lightricks.av_model import LTXAVModel

    model = LTXAVModel(**{**TINY_LTXAV_CONFIG, **overrides}, device="cpu", dtype=torch.float32,
                       operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, std)
    return model.eval()


def build_tiny_ltxav(path, seed: int = 0, std: float = 0.2) -> Path:
    """Write the tiny LTX-2 model (safetensors, metadata config) and return its path."""
    return _save(tiny_ltxav_module(seed, std), path, {"config": {"transformer": TINY_LTXAV_CONFIG}})


def load_model(path):
    """Load a diffusion model file the way core UNETLoader does; returns a ModelPatcher."""
    import_comfy()
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(path))


def tiny_av_conditioning(seed: int, tokens: int = 8):
    """CONDITIONING for the tiny LTX-2 model: a processed text embedding (video | audio halves)."""
    gen = torch.Generator().manual_seed(int(seed))
    cond = torch.randn(1, int(tokens), AV_CONTEXT_CHANNELS, generator=gen)
    return [[cond, {"attention_mask": torch.ones(1, int(tokens), dtype=torch.long)}]]


def audio_latent_frames(video_frames: int = 9, frame_rate: float = 25.0) -> int:
    """Audio latent length LTXVEmptyLatentAudio gives for that many video frames with the LTX-2
    audio VAE (16 kHz, mel hop 160, 4x down: 25 latents per second)."""
    return math.ceil(video_frames / frame_rate * 16000 / 160 / 4)


def tiny_av_latent(width: int = 64, height: int = 64, length: int = 9, audio_frames: int | None = None,
                   batch: int = 1, audio_vae=None) -> dict:
    """LATENT {samples: NestedTensor(video, audio)} made by the core LTXV nodes: EmptyLTXVLatentVideo,
    LTXVEmptyLatentAudio with ``audio_vae`` (a zero audio latent of its shape without one), and
    LTXVConcatAVLatent."""
    import_comfy()
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo, LTXVConcatAVLatent

    video = _node_out(EmptyLTXVLatentVideo.execute(width, height, length, batch))
    if audio_vae is not None and audio_frames is None:
        from comfy_extras.nodes_lt_audio import LTXVEmptyLatentAudio

        audio = _node_out(LTXVEmptyLatentAudio.execute(length, 25.0, batch, audio_vae))
    else:
        t = audio_latent_frames(length) if audio_frames is None else audio_frames
        audio = {"samples": torch.zeros(batch, AUDIO_CHANNELS, t, AUDIO_FREQ_BINS), "type": "audio"}
    return _node_out(LTXVConcatAVLatent.execute(video, audio))


def tiny_video_latent(width: int = 64, height: int = 64, length: int = 9, batch: int = 1) -> dict:
    import_comfy()
    from comfy_extras.nodes_lt import EmptyLTXVLatentVideo

    return _node_out(EmptyLTXVLatentVideo.execute(width, height, length, batch))


def _node_out(out):
    """First output of a node's execute(), for both v3 (NodeOutput) and classic (tuple) nodes."""
    return out.args[0] if hasattr(out, "args") else out[0]


# --- what the two-stage mode needs -----------------------------------------------------------

def vae_weights(vae, seed: int, std: float) -> dict:
    """Random weights for an LTX VAE's state dict: N(0, std) tensors, per-channel statistics with
    means N(0, 0.1) and stds in [0.5, 1.5) (so latents normalise to finite values)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, t in sorted(vae.state_dict().items()):
        if key.endswith("std-of-means"):
            t = 0.5 + torch.rand(t.shape, generator=gen)
        elif key.endswith("mean-of-means"):
            t = torch.randn(t.shape, generator=gen) * 0.1
        elif t.is_floating_point():
            t = torch.randn(t.shape, generator=gen) * std
        sd[key] = t
    return sd


def build_tiny_ltx_vae(path, seed: int = 0) -> Path:
    """A tiny LTX video VAE file for core VAELoader (random per-channel statistics, std > 0)."""
    import_comfy()
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE

    vae = VideoVAE(config=TINY_LTX_VAE_CONFIG)
    return _save(vae_weights(vae, seed, 0.02), path, {"config": {"vae": TINY_LTX_VAE_CONFIG}})


def build_tiny_ltx_tiled_vae(path, seed: int = 0) -> Path:
    """A tiny LTX video VAE with the real decode ratios (TINY_LTX_TILED_VAE_CONFIG), for tiled decodes."""
    import_comfy()
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE

    vae = VideoVAE(config=TINY_LTX_TILED_VAE_CONFIG)
    return _save(vae_weights(vae, seed, 0.05), path, {"config": {"vae": TINY_LTX_TILED_VAE_CONFIG}})


def build_tiny_latent_upscaler(path, seed: int = 0, std: float = 0.05) -> Path:
    """A tiny LTX spatial latent upscaler (x2) for core LatentUpscaleModelLoader."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.lightricks.latent_upsampler import LatentUpsampler

    model = LatentUpsampler.from_config(TINY_UPSCALER_CONFIG, operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(t.shape, generator=gen) * std if t.is_floating_point() else t
          for k, t in sorted(model.state_dict().items())}
    return _save(sd, path, {"config": TINY_UPSCALER_CONFIG})


def load_ltx_vae(path):
    """Load the VAE the way core VAELoader does."""
    import_comfy()
    import comfy.sd
    import comfy.utils

    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    return comfy.sd.VAE(sd=sd, metadata=metadata)


def load_latent_upscaler(path):
    """Load the upscaler the way core LatentUpscaleModelLoader does (through the node itself)."""
    import_comfy()
    import folder_paths

    path = Path(path)
    folder_paths.add_model_folder_path("latent_upscale_models", str(path.parent))
    from comfy_extras.nodes_hunyuan import LatentUpscaleModelLoader

    return _node_out(LatentUpscaleModelLoader.execute(path.name))


# --- the LTX audio VAE ---------------------------------------------------------------------------

def build_tiny_ltx_audio_vae(path, seed: int = 0, std: float = 0.05) -> Path:
    """A tiny LTX audio VAE + vocoder checkpoint for core LTXVAudioVAELoader (``checkpoints``
    folder): keys ``audio_vae.*`` and ``vocoder.*``, metadata ``config`` = {audio_vae, vocoder}."""
    import_comfy()
    from comfy.ldm.lightricks.vae.audio_vae import AudioVAE

    vae = AudioVAE(metadata={"config": json.dumps(TINY_AUDIO_VAE_CONFIG)})
    sd = {}
    for key, t in vae_weights(vae, seed, std).items():
        prefix, rest = key.split(".", 1)
        sd[("audio_vae." if prefix == "autoencoder" else prefix + ".") + rest] = t
    return _save(sd, path, {"config": TINY_AUDIO_VAE_CONFIG})


def load_ltx_audio_vae(path):
    """Load the audio VAE through core LTXVAudioVAELoader itself."""
    import_comfy()
    import comfy.sd  # noqa: F401  (the node module uses it without importing it)
    import folder_paths

    path = Path(path)
    folder_paths.add_model_folder_path("checkpoints", str(path.parent))
    from comfy_extras.nodes_lt_audio import LTXVAudioVAELoader

    return _node_out(LTXVAudioVAELoader.execute(path.name))


# --- a model that is not LTX ---------------------------------------------------------------------

def build_tiny_wan(path, seed: int = 0) -> Path:
    """A 1-block Wan 2.1 t2v model (~0.6 M parameters, mostly the 4096-wide text embedding)."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.wan.model import WanModel

    model = WanModel(**TINY_WAN_CONFIG, device="cpu", dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, 0.02)
    return _save(model, path, {})


# --- API-format graphs for a server ------------------------------------------------------------

POLICY_DEFAULTS = {
    "preset": "ltx2_multimodal", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
    "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 3.0, "video_rescale": 0.7,
    "video_skip_step": 0, "audio_cfg": 7.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 3.0,
    "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0",
}


def ltx2_sampler_graph(model_name: str, *, size: int = 1, mode: str = "one_stage", audio_vae: str | None = None,
                       decode: bool = False, channels: int = AV_CONTEXT_CHANNELS, seed: int = 42, steps: int = 3,
                       width: int = 64, height: int = 64, length: int = 9, upscaler: str | None = None,
                       vae: str | None = None, stage2_sigmas: str = "0.909375, 0.725, 0.421875, 0.0",
                       prefix: str = "latents/ltx2", nonce: int = 0, **policy) -> dict:
    """UNETLoader -> LTX2 Sampler (policy from CFGPolicy Builder) -> SaveLatent.

    With ``audio_vae`` (an LTX audio VAE in the server's ``checkpoints`` folder, see
    build_tiny_ltx_audio_vae) the latent is LTXVConcatAVLatent(EmptyLTXVLatentVideo,
    LTXVEmptyLatentAudio(LTXVAudioVAELoader)) and the result is split again with
    LTXVSeparateAVLatent: SaveLatent "10" holds the video, "11" the audio, "12" the stage-1
    video. Without it the latent is video only (SaveLatent "10" and "12"). ``decode`` (needs
    ``vae`` and ``audio_vae``) adds VAEDecode -> SaveImage "33" for the video frames and
    LTXVAudioVAEDecode -> SaveAudio "35" for the audio."""
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name, "weight_dtype": "default"}},
        "2": {"class_type": "CFGPTestConditioning", "inputs": {"seed": 1, "tokens": 8, "channels": channels,
                                                               "nonce": nonce}},
        "3": {"class_type": "CFGPTestConditioning", "inputs": {"seed": 2, "tokens": 8, "channels": channels,
                                                               "nonce": nonce}},
        "4": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": width, "height": height, "length": length,
                                                               "batch_size": 1}},
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": steps,
                                                         "denoise": 1.0}},
        "20": {"class_type": "CFGPolicyBuilder", "inputs": {**POLICY_DEFAULTS, **policy}},
        "9": {"class_type": "LTX2Sampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "policy": ["20", 0],
            "latent": ["4", 0], "sampler": ["6", 0], "sigmas": ["8", 0], "noise_seed": seed, "mode": mode,
            "parallel_size": size, "devices": "cpu", "stage2_sigmas": stage2_sigmas}},
    }
    if audio_vae is not None:
        g["30"] = {"class_type": "LTXVAudioVAELoader", "inputs": {"ckpt_name": audio_vae}}
        g["5"] = {"class_type": "LTXVEmptyLatentAudio", "inputs": {"frames_number": length, "frame_rate": 25.0,
                                                                   "batch_size": 1, "audio_vae": ["30", 0]}}
        g["13"] = {"class_type": "LTXVConcatAVLatent", "inputs": {"video_latent": ["4", 0], "audio_latent": ["5", 0]}}
        g["9"]["inputs"]["latent"] = ["13", 0]
        g["14"] = {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": ["9", 0]}}
        g["15"] = {"class_type": "LTXVSeparateAVLatent", "inputs": {"av_latent": ["9", 1]}}
        g["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["14", 0], "filename_prefix": prefix + "_video"}}
        g["11"] = {"class_type": "SaveLatent", "inputs": {"samples": ["14", 1], "filename_prefix": prefix + "_audio"}}
        g["12"] = {"class_type": "SaveLatent", "inputs": {"samples": ["15", 0], "filename_prefix": prefix + "_s1"}}
        video_out = ["14", 0]
    else:
        g["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": prefix + "_video"}}
        g["12"] = {"class_type": "SaveLatent", "inputs": {"samples": ["9", 1], "filename_prefix": prefix + "_s1"}}
        video_out = ["9", 0]
    if upscaler is not None:
        g["16"] = {"class_type": "LatentUpscaleModelLoader", "inputs": {"model_name": upscaler}}
        g["9"]["inputs"]["upscale_model"] = ["16", 0]
    if vae is not None:
        g["17"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae}}
        g["9"]["inputs"]["vae"] = ["17", 0]
    if decode:
        if vae is None or audio_vae is None:
            raise ValueError("decode=True needs vae and audio_vae")
        g["32"] = {"class_type": "VAEDecode", "inputs": {"samples": video_out, "vae": ["17", 0]}}
        g["33"] = {"class_type": "SaveImage", "inputs": {"images": ["32", 0], "filename_prefix": prefix + "_frames"}}
        g["34"] = {"class_type": "LTXVAudioVAEDecode", "inputs": {"samples": ["14", 1], "audio_vae": ["30", 0]}}
        g["35"] = {"class_type": "SaveAudio", "inputs": {"audio": ["34", 0], "filename_prefix": prefix + "_audio"}}
    return g
