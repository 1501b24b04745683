"""Tiny real models for tests, built with ComfyUI's own classes.

``build_tiny_ltxv`` writes a 2-layer LTX-Video transformer (2 heads x 16 dims, 32-dim
captions, 128 latent channels) that ComfyUI 0.3.75's model detection recognises and
the core ``UNETLoader`` loads from a ``diffusion_models`` folder.
``build_tiny_lora`` writes a LoRA for it that ``LoraLoaderModelOnly`` applies.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .paths import import_comfy

# Constructor arguments of comfy.ldm.lightricks.model.LTXVModel. Detection reads
# num_layers / attention_head_dim / cross_attention_dim from the weights (assuming 32
# heads), and the safetensors metadata "config" overrides them with these values.
TINY_LTXV_CONFIG = {
    "in_channels": 128,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "cross_attention_dim": 32,
    "caption_channels": 32,
}

# Linear layers the tiny LoRA patches (module names inside the diffusion model).
TINY_LORA_TARGETS = (
    "transformer_blocks.0.attn1.to_q",
    "transformer_blocks.0.attn1.to_v",
    "transformer_blocks.1.attn1.to_k",
    "transformer_blocks.1.attn2.to_out.0",
)


def init_weights(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)


def tiny_ltxv_module(seed: int = 0, dtype=torch.float32, std: float = 0.02):
    """The initialised LTXVModel (a torch module, not a ComfyUI ModelPatcher).
    With the default std 0.02 the conditioning moves the output only by ~5e-5; a larger
    std (e.g. 0.2) makes cond/uncond differ visibly."""
    import_comfy()
    import comfy.ops
    from comfy.ldm.lightricks.model import LTXVModel

    model = LTXVModel(
        **TINY_LTXV_CONFIG,
        dtype=dtype,
        device="cpu",
        operations=comfy.ops.disable_weight_init,
    )
    init_weights(model, seed, std)
    return model.eval()


def build_tiny_ltxv(path, seed: int = 0, std: float = 0.02) -> Path:
    """Write the tiny LTXV model to ``path`` (safetensors) and return the path."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = tiny_ltxv_module(seed, std=std)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"config": json.dumps({"transformer": TINY_LTXV_CONFIG})}
    save_file(sd, str(path), metadata=metadata)
    return path


def build_tiny_lora(path, base_path, seed: int = 1, rank: int = 4, alpha: float | None = None,
                    targets=TINY_LORA_TARGETS, std: float = 0.2) -> Path:
    """Write a LoRA for the model at ``base_path`` to ``path``.

    Keys use ComfyUI's generic format, which 0.3.75's ``model_lora_keys_unet`` maps for
    every model: ``diffusion_model.<module>.lora_up.weight`` (out x rank),
    ``.lora_down.weight`` (rank x in) and ``.alpha`` (scalar; scale = alpha / rank).
    Both factors are non-zero so the patch changes the output.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    alpha = float(rank if alpha is None else alpha)
    out = {}
    with safe_open(str(base_path), framework="pt") as f:
        keys = set(f.keys())
        for module in targets:
            wkey = f"{module}.weight"
            if wkey not in keys:
                raise KeyError(f"{wkey} not in {base_path}")
            n_out, n_in = f.get_slice(wkey).get_shape()
            prefix = f"diffusion_model.{module}"
            out[f"{prefix}.lora_up.weight"] = torch.randn(n_out, rank, generator=gen) * std
            out[f"{prefix}.lora_down.weight"] = torch.randn(rank, n_in, generator=gen) * std
            out[f"{prefix}.alpha"] = torch.tensor(alpha)
    save_file(out, str(path))
    return path


def tiny_conditioning(seed: int, tokens: int = 8, channels: int = 32):
    """CONDITIONING for the tiny LTXV model (no text encoder is small enough)."""
    gen = torch.Generator().manual_seed(int(seed))
    cond = torch.randn(1, int(tokens), int(channels), generator=gen)
    # The mask must be an integer tensor (as text encoders give it): LTXV turns an integer
    # mask into an additive bias but passes a float one through unchanged, and 0.3.75's
    # sub-quadratic attention then mis-broadcasts it once cond and uncond are batched.
    return [[cond, {"attention_mask": torch.ones(1, int(tokens), dtype=torch.long)}]]


def tiny_latent(seed: int = 0, frames: int = 2, height: int = 2, width: int = 2) -> torch.Tensor:
    """A random latent (1, 128, F, H, W) for the tiny model."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, TINY_LTXV_CONFIG["in_channels"], frames, height, width, generator=gen)


def load_tiny_ltxv(path):
    """Load a tiny model file the way UNETLoader does; returns a ModelPatcher."""
    import_comfy()
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(path))


def forward_once(model_patcher, latent=None, cond=None, sigma: float = 0.5) -> torch.Tensor:
    """One denoiser evaluation of a loaded ModelPatcher (applies its patches, e.g. LoRA)."""
    import_comfy()
    import comfy.model_management as mm

    latent = tiny_latent() if latent is None else latent
    cond = tiny_conditioning(0) if cond is None else cond
    mm.load_models_gpu([model_patcher])
    base = model_patcher.model
    ctx, extra = cond[0]
    sig = torch.tensor([sigma])
    with torch.no_grad():
        return base.apply_model(latent, sig, c_crossattn=ctx, attention_mask=extra["attention_mask"],
                                frame_rate=25, transformer_options={}).float()


def tiny_ltxv_graph(model_name: str = "tiny_ltxv.safetensors", lora_name: str | None = None,
                    lora_strength: float = 1.0, seed: int = 42, cfg: float = 3.0, steps: int = 2,
                    width: int = 64, height: int = 64, length: int = 9, sampler: str = "euler",
                    scheduler: str = "simple", pos_seed: int = 1, neg_seed: int = 2,
                    prefix: str = "latents/cfgp_test", nonce: int = 0) -> dict:
    """API-format graph: UNETLoader [+ LoraLoaderModelOnly] -> CFGGuider -> SamplerCustomAdvanced
    -> SaveLatent, with CFGPTestConditioning for positive/negative. Node ids are fixed
    strings (see below) so tests can swap one node, e.g. graph["7"] for another guider.
    ``nonce`` changes the graph's cache key without changing the result."""
    model_ref = ["1", 0]
    g = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name, "weight_dtype": "default"}},
        "2": {"class_type": "CFGPTestConditioning", "inputs": {"seed": pos_seed, "tokens": 8, "channels": 32, "nonce": nonce}},
        "3": {"class_type": "CFGPTestConditioning", "inputs": {"seed": neg_seed, "tokens": 8, "channels": 32, "nonce": nonce}},
        "4": {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": width, "height": height, "length": length, "batch_size": 1}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": model_ref, "scheduler": scheduler, "steps": steps, "denoise": 1.0}},
        "7": {"class_type": "CFGGuider", "inputs": {"model": model_ref, "positive": ["2", 0], "negative": ["3", 0], "cfg": cfg}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["5", 0], "guider": ["7", 0], "sampler": ["6", 0], "sigmas": ["8", 0], "latent_image": ["4", 0]}},
        "10": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": prefix}},
    }
    if lora_name is not None:
        g["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": lora_strength}}
        g["7"]["inputs"]["model"] = ["11", 0]
        g["8"]["inputs"]["model"] = ["11", 0]
    return g


# Linear layers the tiny quantized checkpoint stores as scaled fp8 (the rest stay float32).
TINY_QUANT_LAYERS = tuple(f"transformer_blocks.{b}.{m}" for b in (0, 1)
                          for m in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_out.0", "ff.net.0.proj"))


def build_tiny_ltxv_quantized(path, seed: int = 0, std: float = 0.2, layers=TINY_QUANT_LAYERS,
                              style: str = "comfy_quant") -> Path:
    """Write the tiny LTXV model with ``layers`` stored as per-tensor scaled float8_e4m3fn, in
    one of the two formats ComfyUI 0.29's loader reads (``comfy.utils.convert_old_quants`` /
    ``detect_layer_quantization``), which load as comfy-kitchen ``QuantizedTensor`` weights:

    * ``comfy_quant``: mixed precision, ``<layer>.weight`` (fp8), ``<layer>.weight_scale``
      (float32 scalar) and ``<layer>.comfy_quant`` (the layer's JSON config as uint8 bytes);
    * ``scaled_fp8``: the older format, a ``scaled_fp8`` marker tensor and
      ``<layer>.scale_weight`` instead.

    The fp8 data and scale come from ComfyUI's own fp8 layout (needs 0.29's comfy.quant_ops)."""
    import comfy.quant_ops
    from safetensors.torch import save_file

    if style not in ("comfy_quant", "scaled_fp8"):
        raise ValueError(f"unknown style {style!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in tiny_ltxv_module(seed, std=std).state_dict().items()}
    for layer in layers:
        qdata, params = comfy.quant_ops.TensorCoreFP8Layout.quantize(sd[f"{layer}.weight"], scale="recalculate")
        sd[f"{layer}.weight"] = qdata.contiguous()
        if style == "comfy_quant":
            sd[f"{layer}.weight_scale"] = params.scale.reshape(())
            conf = json.dumps({"format": "float8_e4m3fn"}).encode("utf-8")
            sd[f"{layer}.comfy_quant"] = torch.tensor(list(conf), dtype=torch.uint8)
        else:
            sd[f"{layer}.scale_weight"] = params.scale.reshape(())
    if style == "scaled_fp8":
        sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    save_file(sd, str(path), metadata={"config": json.dumps({"transformer": TINY_LTXV_CONFIG})})
    return path
