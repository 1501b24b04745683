"""Quantized checkpoints (comfy-kitchen QuantizedTensor weights: mixed-precision `comfy_quant`
and scaled-fp8 files) at parallel size 2, in process with real CPU worker processes: size 2
equals size 1 bit for bit, a reload of the same file is not loaded again on the ranks, and a
quantized model without a loader recipe is refused before any rank starts."""
from __future__ import annotations

import pytest
import torch

from support.paths import NEEDS_029
from devkit.tiny_models import load_tiny_ltxv, tiny_conditioning, tiny_latent


def _needs_quant():
    try:
        import comfy.quant_ops
    except ImportError:
        pytest.skip(f"{NEEDS_029} this ComfyUI has no comfy.quant_ops (mixed-precision / comfy_quant checkpoints)")
    if not getattr(comfy.quant_ops, "_CK_AVAILABLE", False):
        pytest.skip(f"{NEEDS_029} comfy-kitchen is not installed (QuantizedTensor)")


@pytest.fixture(scope="module")
def quant_paths(tiny_model_dir) -> dict:
    """The tiny LTXV with 10 Linear weights in scaled fp8, in both formats ComfyUI 0.29 reads."""
    _needs_quant()
    from devkit.tiny_models import build_tiny_ltxv_quantized

    return {style: build_tiny_ltxv_quantized(tiny_model_dir / f"tiny_ltxv_{style}.safetensors", style=style)
            for style in ("comfy_quant", "scaled_fp8")}


@pytest.fixture
def group_down():
    from cfg_runtime.group import shutdown_group

    shutdown_group()
    yield
    shutdown_group()


def _sample(patcher, size: int):
    """(result, guider) of a 3-step euler run with standard CFG."""
    import comfy.samplers
    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.guidance.presets import standard_cfg

    guider = MultiBranchGuider(patcher, standard_cfg(3.0), ParallelSettings(world_size=size, devices="cpu",
                                                                            step_timeout_s=120.0))
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    latent = tiny_latent(0)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():  # as ComfyUI runs nodes
        out = guider.sample(noise, latent, comfy.samplers.ksampler("euler"), torch.tensor([1.0, 0.6, 0.3, 0.0]),
                            disable_pbar=True, seed=7)
    return out, guider


def _load(path):
    """UNETLoader's load, under inference mode as ComfyUI runs nodes (QuantizedTensor
    parameters made outside it cannot be re-wrapped inside it, when the sampler moves them)."""
    with torch.inference_mode():
        return load_tiny_ltxv(path)


def _quantized(patcher) -> list[str]:
    from comfy.quant_ops import QuantizedTensor

    return [n for n, p in patcher.model.named_parameters() if isinstance(p, QuantizedTensor)]


def _base_loaded(guider) -> list[bool]:
    return [r["base_loaded"] for r in guider.last_run["per_rank"]]


def test_quantized_checkpoints_size2_equal_size1_and_a_reload_is_not_loaded_again(quant_paths, tmp_path, group_down):
    """Both formats, one worker group: the ranks load each file with the loader's recipe;
    ComfyUI loading the same file again is the same model to them (nothing loaded), also
    with a LoRA on its quantized layers."""
    import comfy.sd
    import comfy.utils
    from devkit.tiny_models import build_tiny_lora

    lora = build_tiny_lora(tmp_path / "lora.safetensors", quant_paths["comfy_quant"])
    first = _load(quant_paths["comfy_quant"])
    assert len(_quantized(first)) == 10, "the core loader should give QuantizedTensor weights"
    serial, _ = _sample(first, 1)
    assert torch.isfinite(serial).all()
    parallel, guider = _sample(first, 2)
    assert torch.equal(parallel, serial)
    assert _base_loaded(guider) == [True, True]
    second = _load(quant_paths["comfy_quant"])  # ComfyUI dropped it and loaded the same file again
    assert second.model is not first.model
    again, guider = _sample(second, 2)
    assert torch.equal(again, serial)
    assert _base_loaded(guider) == [False, False]
    with torch.inference_mode():  # a LoRA on quantized layers (the ranks patch their own copy, as ComfyUI does)
        patched, _ = comfy.sd.load_lora_for_models(second, None, comfy.utils.load_torch_file(str(lora)), 1.0, 0)
    lora_serial, _ = _sample(patched, 1)
    assert not torch.equal(lora_serial, serial)
    lora_parallel, guider = _sample(patched, 2)
    assert torch.equal(lora_parallel, lora_serial)
    assert _base_loaded(guider) == [False, False]
    legacy = _load(quant_paths["scaled_fp8"])
    assert len(_quantized(legacy)) == 10
    legacy_serial, _ = _sample(legacy, 1)
    legacy_parallel, guider = _sample(legacy, 2)
    assert torch.equal(legacy_parallel, legacy_serial)
    assert _base_loaded(guider) == [True, True]  # another file: loaded


def test_quantized_model_without_recipe_is_refused_before_any_rank_starts(quant_paths, group_down):
    from cfg_runtime.errors import ShippingError
    from cfg_runtime.group import current_group

    patcher = _load(quant_paths["comfy_quant"])
    patcher.cached_patcher_init = None  # a custom loader that registers no recipe
    with pytest.raises(ShippingError) as info:
        _sample(patcher, 2)
    msg = str(info.value)
    assert "QuantizedTensor" in msg and "recipe" in msg and "parallel size 1" in msg
    assert current_group() is None or not current_group().alive()
