"""The test harness itself: a real ComfyUI server runs a tiny LTXV graph."""
from __future__ import annotations

import pytest
import torch

from devkit.comfy_server import PromptRejected
from devkit.tiny_models import tiny_ltxv_graph

LORA = "tiny_lora.safetensors"


def test_tiny_ltxv_loads_in_process(tiny_ltxv_path):
    from devkit.tiny_models import TINY_LTXV_CONFIG, forward_once, load_tiny_ltxv

    mp = load_tiny_ltxv(tiny_ltxv_path)
    dm = mp.model.diffusion_model
    assert type(mp.model).__name__ == "LTXV"
    assert len(dm.transformer_blocks) == TINY_LTXV_CONFIG["num_layers"] == 2
    assert dm.inner_dim == 32 and dm.transformer_blocks[0].attn1.heads == 2
    y = forward_once(mp)
    assert y.shape == (1, 128, 2, 2, 2) and torch.isfinite(y).all()


def test_tiny_lora_applies_in_process(tiny_ltxv_path, tiny_lora_path):
    import comfy.sd
    import comfy.utils
    from devkit.tiny_models import TINY_LORA_TARGETS, forward_once, load_tiny_ltxv

    mp = load_tiny_ltxv(tiny_ltxv_path)
    lora = comfy.utils.load_torch_file(str(tiny_lora_path))
    patched, _ = comfy.sd.load_lora_for_models(mp, None, lora, 1.0, 0)
    assert len(patched.patches) == len(TINY_LORA_TARGETS)  # every key was recognised
    base = forward_once(mp)
    out = forward_once(patched)
    assert not torch.equal(base, out)
    assert torch.equal(forward_once(mp), base)  # unpatched again afterwards


@pytest.mark.server
def test_server_lists_core_and_test_nodes(comfy_server):
    info = comfy_server.object_info()
    for name in ("SamplerCustomAdvanced", "UNETLoader", "CFGGuider", "SaveLatent",
                 "LoraLoaderModelOnly", "EmptyLTXVLatentVideo", "CFGPTestConditioning"):
        assert name in info, f"{name} missing from /object_info"
    unet_names = info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert "tiny_ltxv.safetensors" in unet_names
    assert LORA in info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]


def _sample(server, **kw):
    entry = server.run(tiny_ltxv_graph(**kw), timeout=120)
    return server.saved_latent(entry)


@pytest.mark.server
def test_tiny_ltxv_graph_runs(comfy_server):
    latent = _sample(comfy_server, nonce=1)
    # EmptyLTXVLatentVideo 64x64x9 -> (1, 128, (9-1)//8+1, 64//32, 64//32)
    assert latent.shape == (1, 128, 2, 2, 2)
    assert latent.dtype == torch.float32
    assert torch.isfinite(latent).all()
    assert latent.abs().max() > 0


@pytest.mark.server
def test_lora_changes_result(comfy_server):
    base = _sample(comfy_server, nonce=2)
    with_lora = _sample(comfy_server, nonce=2, lora_name=LORA)
    assert with_lora.shape == base.shape
    assert torch.isfinite(with_lora).all()
    assert not torch.equal(with_lora, base)
    # and a zero-strength LoRA is a no-op
    zero = _sample(comfy_server, nonce=2, lora_name=LORA, lora_strength=0.0)
    assert torch.equal(zero, base)


@pytest.mark.server
def test_repeat_is_bit_identical(comfy_server):
    # Different nonces defeat ComfyUI's output cache, so sampling really runs twice.
    a = _sample(comfy_server, nonce=3)
    b = _sample(comfy_server, nonce=4)
    assert torch.equal(a, b)
    c = _sample(comfy_server, nonce=5, seed=43)
    assert not torch.equal(a, c)


@pytest.mark.server
def test_invalid_prompt_reports_node_errors(comfy_server):
    g = tiny_ltxv_graph()
    g["1"]["inputs"]["unet_name"] = "does_not_exist.safetensors"
    with pytest.raises(PromptRejected) as ei:
        comfy_server.queue(g)
    assert "1" in ei.value.node_errors
