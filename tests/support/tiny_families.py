"""Tiny random-weight models of other families, built with ComfyUI's own classes.

What ComfyUI's model detection (``comfy/model_detection.py``) accepts, measured on 0.3.75
and 0.29:

* **SD 1.5 UNet** (:func:`build_tiny_sd15`): detection reads every dimension from the
  weights, and ``supported_models.SD15`` matches only on ``model_channels`` 320,
  ``context_dim`` 768, no linear projections, no ADM input. So the width stays 320, and
  the depth is what shrinks: one level (``channel_mult [1]``), one res block, one
  transformer block, a middle block without attention (~9 M parameters). EPS prediction,
  4 latent channels. ``prefix="model.diffusion_model."`` writes a checkpoint that core
  ``CheckpointLoaderSimple`` loads (it holds no text encoder and no VAE: both versions
  then load the model alone and warn).
* **Wan 2.1 t2v** (``support.tiny_ltx2.build_tiny_wan``): dim 128 = one 128-wide head,
  from the shapes alone, on both versions.
* **Flux** (:func:`build_tiny_flux`): 0.29 derives ``num_heads`` from ``hidden_size /
  sum(axes_dim)``, so hidden 128 gives one head of 128; 0.3.75 fixes 24 heads, which
  forces hidden 3072 (~0.4 B parameters for a single block pair): too large for a CPU test,
  so Flux is 0.29 only (:func:`tiny_flux_supported`).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .paths import COMFYUI_DIR, import_comfy
from devkit.tiny_models import init_weights

# UNetModel arguments as detection reports them for the file build_tiny_sd15 writes.
TINY_SD15_CONFIG = {
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [1],
    "channel_mult": [1], "transformer_depth": [1], "transformer_depth_output": [0, 1],
    "transformer_depth_middle": -2, "num_heads": 8, "num_head_channels": -1, "context_dim": 768,
    "use_spatial_transformer": True, "use_linear_in_transformer": False, "legacy": False, "adm_in_channels": None,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD15_CONTEXT_CHANNELS = 768

# comfy.ldm.flux.model.Flux arguments (FluxParams) for a 1 + 1 block, 128-wide Flux dev-like model
# (guidance embedding on, pooled-vector input 32 wide, text 64 wide).
TINY_FLUX_CONFIG = {
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32, "context_in_dim": 64,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 1, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
    "txt_ids_dims": [],
}
FLUX_CONTEXT_CHANNELS = TINY_FLUX_CONFIG["context_in_dim"]
WAN_CONTEXT_CHANNELS = 4096  # WanModel's text_dim (umt5-xxl width), fixed by detection


def _save(sd: dict, path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    return path


def build_tiny_sd15(path, seed: int = 0, std: float = 0.05, prefix: str = "") -> Path:
    """An SD 1.5-detected UNet (safetensors). ``prefix`` "" for UNETLoader, or
    "model.diffusion_model." for a CheckpointLoaderSimple checkpoint."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model = UNetModel(**TINY_SD15_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, std)
    return _save({prefix + k: v for k, v in model.state_dict().items()}, path)


def tiny_flux_supported(comfyui_dir=None) -> bool:
    """True when that ComfyUI derives Flux's head count from the weights (0.29 does; 0.3.75 fixes 24)."""
    text = (Path(comfyui_dir or COMFYUI_DIR) / "comfy" / "model_detection.py").read_text(errors="replace")
    return 'dit_config["num_heads"] = dit_config["hidden_size"] // sum(dit_config["axes_dim"])' in text


def build_tiny_flux(path, seed: int = 0, std: float = 0.05) -> Path:
    """A 1 double + 1 single block Flux (hidden 128, one head) that 0.29's UNETLoader detects as Flux."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    model = Flux(**TINY_FLUX_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, std)
    return _save(model.state_dict(), path)


def detected(path, prefix: str = "") -> tuple[str, dict]:
    """(supported_models class name, detected unet config) for a file, as the core loaders see it."""
    import_comfy()
    import comfy.model_detection
    import comfy.utils

    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    config = comfy.model_detection.model_config_from_unet(sd, prefix, metadata=metadata)
    return (type(config).__name__ if config is not None else "None"), (config.unet_config if config else {})


# An LTX video VAE whose encoder compresses like the real one (8x in time, 32x in space:
# patch 4 and three compress_all blocks), so core nodes that encode images (LTXVImgToVideo,
# LTXVImgToVideoInplace, LTXVAddGuide) get latents of the right shape. Detection needs a
# decoder res block; the decoder is never run (and has no upsampling). 0.3.75 ignores the
# *_base_channels keys (128 channels): ~2.7 M parameters there, ~0.1 M on 0.29.
TINY_LTX_VAE_32X_CONFIG = {
    "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128, "patch_size": 4,
    "encoder_blocks": [["res_x", 1], ["compress_all", 1], ["compress_all", 1], ["compress_all", 1]],
    "decoder_blocks": [["res_x", 1]], "encoder_base_channels": 8, "decoder_base_channels": 8,
    "norm_layer": "pixel_norm", "latent_log_var": "uniform", "causal_decoder": False,
}


def build_tiny_ltx_vae_32x(path, seed: int = 0) -> Path:
    """The encoding tiny LTX VAE above (core VAELoader; metadata ``{"vae": config}``)."""
    import_comfy()
    from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE

    from .tiny_ltx2 import vae_weights

    vae = VideoVAE(config=TINY_LTX_VAE_32X_CONFIG)
    return _save(vae_weights(vae, seed, 0.05), path, {"config": {"vae": TINY_LTX_VAE_32X_CONFIG}})


def write_test_image(path, width: int = 64, height: int = 64, seed: int = 0) -> Path:
    """A random RGB PNG for core LoadImage."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def build_tiny_ltxav_checkpoint(path, seed: int = 0) -> Path:
    """The tiny LTX-2 audio+video model of ``support.tiny_ltx2`` as a CheckpointLoaderSimple
    checkpoint (``model.diffusion_model.`` prefix, metadata config), as the LTX-2.3 blueprints load it."""
    from .tiny_ltx2 import TINY_LTXAV_CONFIG, tiny_ltxav_module

    sd = {"model.diffusion_model." + k: v for k, v in tiny_ltxav_module(seed).state_dict().items()}
    return _save(sd, path, {"config": {"transformer": TINY_LTXAV_CONFIG}})
