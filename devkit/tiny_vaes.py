"""Tiny real VAEs for tests, built with ComfyUI's own classes and loaded by core ``VAELoader``.

* ``build_tiny_wan21_vae``: a Wan 2.1 video VAE (``comfy.ldm.wan.vae.WanVAE``) of width
  ``dim`` (ComfyUI reads the width from ``decoder.head.0.gamma``); 16 latent channels,
  x4 in time, x8 in space, as the real one.
* ``build_tiny_taesd``: a TAESD image VAE (all versions).
* ``build_tiny_image_vae``: a Flux/SD3-style image VAE (``comfy.ldm.models.autoencoder.
  AutoencodingEngine`` with core's ``Decoder``): 16 latent channels, x8 in space. ComfyUI
  reads the decoder's width from ``decoder.conv_in.weight``; its encoder has core's fixed
  width, so the file carries only the decoder (ComfyUI logs the encoder keys as missing).
  ComfyUI 0.29 and later read the decoder's width; 0.3.75 does not.

Weights are random (seeded); nothing here is a trained model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .paths import import_comfy
from .tiny_models import init_weights


def _save(module: torch.nn.Module, path, prefix: str = "") -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {prefix + k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    save_file(sd, str(path))
    return path


def build_tiny_wan21_vae(path, dim: int = 8, seed: int = 0, std: float = 0.2) -> Path:
    """Write a Wan 2.1 VAE of width ``dim`` (real: 96) to ``path``."""
    import_comfy()
    from comfy.ldm.wan.vae import WanVAE

    model = WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True], dropout=0.0)
    init_weights(model, seed, std)
    with torch.no_grad():  # RMS norms: unit gains, as a trained model starts
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    return _save(model, path)


def build_tiny_image_vae(path, ch: int = 32, z_channels: int = 16, seed: int = 0, std: float = 0.05) -> Path:
    """Write the decoder of a Flux-style image VAE of width ``ch`` (real: 128; a multiple of 32
    for the group norms) to ``path``."""
    import_comfy()
    from comfy.ldm.modules.diffusionmodules.model import Decoder

    decoder = Decoder(ch=ch, out_ch=3, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                      in_channels=3, resolution=256, z_channels=z_channels, dropout=0.0)
    init_weights(decoder, seed, std)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
    return _save(decoder, path, prefix="decoder.")


def build_tiny_taesd(path, latent_channels: int = 16, seed: int = 0, std: float = 0.05) -> Path:
    """Write a TAESD image VAE (``comfy.taesd.taesd.TAESD``, the SD/SDXL/Flux preview decoder family;
    core's width, ~2.4 M parameters) to ``path``: the image VAE every ComfyUI version builds small."""
    import_comfy()
    from comfy.taesd.taesd import TAESD

    model = TAESD(latent_channels=latent_channels)
    init_weights(model, seed, std)
    with torch.no_grad():
        model.vae_scale.fill_(1.0)
        model.vae_shift.fill_(0.0)
    return _save(model, path)


def tiny_video_latent(seed: int = 0, frames: int = 6, height: int = 8, width: int = 32) -> torch.Tensor:
    """A random latent (1, 16, F, H, W) for the tiny Wan 2.1 VAE."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, frames, height, width, generator=gen)


def tiny_image_latent(seed: int = 0, batch: int = 1, height: int = 20, width: int = 12) -> torch.Tensor:
    """A random latent (B, 16, H, W) for the tiny image VAE."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 16, height, width, generator=gen)
