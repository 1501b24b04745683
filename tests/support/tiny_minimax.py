"""A tiny MiniMax-H3 (``comfy.ldm.minimax.model.MiniMaxH3Model``, ComfyUI 0.33) with random
weights, its inputs, and a safetensors file that core detection loads as MiniMax-H3.

The model's RoPE ``inv_freq`` is a buffer made with ``torch.empty`` (the checkpoint fills it):
:func:`tiny_minimax` sets it, or every rank would hold different memory garbage as its RoPE
frequencies (which is what made an earlier split test differ by 1e-4..2e-3 at degree >= 2).
"""
from __future__ import annotations

import torch

from devkit.tiny_models import init_weights

from .paths import import_comfy

TEXT_TOKENS = 7
TEXT_DIM = 24
# rot_dim = 6 * rope_inv_freq_len must fit a head (8): one frequency per axis (t, h, w)
CONFIG = {"num_layers": 2, "token_refiner_num_layers": 1, "attention_head_dim": 8, "ffn_hidden_size": 64,
          "latents_dim": 24, "audio_latents_dim": 32, "text_dim": TEXT_DIM, "timestep_input_dim": 16,
          "time_embed_hidden_size": 32, "time_embed_dim": 32, "rope_inv_freq_len": 1}


def tiny_minimax(heads: int = 12, seed: int = 0, std: float = 0.2):
    """The initialised tiny model (fp32, CPU), ``heads`` heads of 8."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.minimax.model import MiniMaxH3Model

    model = MiniMaxH3Model(hidden_size=heads * 8, num_attention_heads=heads, **CONFIG, dtype=torch.float32,
                           device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, std)
    with torch.no_grad():
        model.rope.inv_freq.copy_(torch.tensor([0.37]))
    return model.eval().requires_grad_(False)  # the in-place RoPE kernel refuses weights that need grad


def minimax_call(gen, batch: int, frames: int, height: int, width: int, masked: bool = False) -> dict:
    """One evaluation's inputs (batch 1: the model's limit); ``masked``: a denoise mask with three
    levels over the video rows (per-token modulation rows) and two over the audio."""
    video = torch.randn(1, CONFIG["latents_dim"], frames, height, width, generator=gen)
    audio = torch.randn(1, CONFIG["audio_latents_dim"], 2, 5, generator=gen)
    call = {"x": [video, audio], "timestep": torch.tensor([700.0]),
            "context": torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen)}
    if masked:
        mask = torch.ones(1, 1, frames, height, width)
        mask[:, :, 0, :2] = 0.0
        mask[:, :, -1, -2:] = 0.5
        audio_mask = torch.ones(1, 1, 2, 5)
        audio_mask[..., :2] = 0.25
        call.update(denoise_mask=mask, audio_denoise_mask=audio_mask)
    return call


def build_tiny_minimax_file(path, heads: int = 2, seed: int = 0, std: float = 0.05):
    """The tiny model as a safetensors file that UNETLoader / load_diffusion_model detect."""
    from safetensors.torch import save_file

    model = tiny_minimax(heads, seed, std)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path
