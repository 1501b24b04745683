"""Model transport in process (ComfyUI as a library, real worker processes on the CPU):
which copy of the base weights the ranks get, that a reload of the same file is not sent
again, and what is refused before a rank starts."""
from __future__ import annotations

import ctypes

import pytest
import torch

from devkit.tiny_models import tiny_conditioning, tiny_latent, load_tiny_ltxv


def _guider(patcher, size: int):
    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.guidance.presets import standard_cfg

    g = MultiBranchGuider(patcher, standard_cfg(3.0), ParallelSettings(world_size=size, devices="cpu",
                                                                       step_timeout_s=120.0))
    g.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    return g


def _sample(patcher, size: int) -> torch.Tensor:
    import comfy.samplers

    latent = tiny_latent(0)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])
    with torch.inference_mode():  # as ComfyUI runs nodes
        return _guider(patcher, size).sample(noise, latent, comfy.samplers.ksampler("euler"), sigmas,
                                             disable_pbar=True, seed=7)


def _shared(model) -> bool:
    return all(p.is_shared() for p in model.parameters())


@pytest.fixture
def group_down():
    from cfg_runtime.group import shutdown_group

    shutdown_group()
    yield
    shutdown_group()


def _needs_recipe(patcher):
    if getattr(patcher, "cached_patcher_init", None) is None:
        pytest.skip("this ComfyUI's loaders leave no cached_patcher_init (0.29 has it)")


def test_plain_model_is_the_shared_copy(tiny_ltxv_path, group_down):
    """ComfyUI's own (plain) model becomes the one shared copy: its weights move to shared memory."""
    patcher = load_tiny_ltxv(tiny_ltxv_path)
    serial = _sample(patcher, 1)
    assert not _shared(patcher.model)
    assert torch.equal(_sample(patcher, 2), serial)
    assert _shared(patcher.model)


def test_model_with_unpicklable_state_travels_by_recipe(tiny_ltxv_path, group_down):
    """A model carrying ctypes state (what comfy-aimdo leaves on a dynamic-VRAM model) cannot be
    pickled: the ranks get a pristine copy built with the loader's recipe; ComfyUI's own model
    is left alone (its weights stay where they are)."""
    import cfg_runtime.adapters.models.transport as cm

    patcher = load_tiny_ltxv(tiny_ltxv_path)
    _needs_recipe(patcher)
    patcher.model.cfgp_test_ctypes = (ctypes.c_uint * 2)()  # the kind of object aimdo's vbar holds
    serial = _sample(patcher, 1)
    route = cm.route_weights(patcher)
    assert route.from_recipe and route.token.startswith("recipe:")
    assert torch.equal(_sample(patcher, 2), serial)
    assert not _shared(patcher.model)
    delegate = cm._DELEGATE[route.token]
    assert delegate is not patcher.model and _shared(delegate)


def test_same_file_reloaded_is_not_sent_again(tiny_ltxv_path, group_down):
    """ComfyUI dropped the model and loaded the same file with the same options: same recipe
    token, the ranks keep what they hold, the new model's weights are not moved anywhere."""
    import cfg_runtime.adapters.models.transport as cm

    first = load_tiny_ltxv(tiny_ltxv_path)
    _needs_recipe(first)
    serial = _sample(first, 1)
    assert torch.equal(_sample(first, 2), serial)
    assert _shared(first.model)
    second = load_tiny_ltxv(tiny_ltxv_path)
    assert second.model is not first.model
    assert cm.base_token(second) == cm.base_token(first)
    assert torch.equal(_sample(second, 2), serial)
    assert not _shared(second.model)  # nothing was sent: its weights are still private


def test_another_file_is_another_model(tiny_ltxv_path, tmp_path, group_down):
    """A different file (or the same path rewritten) gets another token and is sent."""
    import cfg_runtime.adapters.models.transport as cm
    from devkit.tiny_models import build_tiny_ltxv

    first = load_tiny_ltxv(tiny_ltxv_path)
    _needs_recipe(first)
    other = load_tiny_ltxv(build_tiny_ltxv(tmp_path / "other.safetensors", seed=3, std=0.2))
    assert cm.base_token(other) != cm.base_token(first)
    serial = _sample(other, 1)
    assert torch.equal(_sample(first, 2), _sample(first, 1))
    assert torch.equal(_sample(other, 2), serial)
    assert _shared(other.model)


def test_unshippable_model_without_recipe_is_refused_before_any_rank_starts(tiny_ltxv_path, group_down):
    from cfg_runtime.errors import ShippingError
    from cfg_runtime.group import current_group

    patcher = load_tiny_ltxv(tiny_ltxv_path)
    patcher.cached_patcher_init = None  # a custom loader that registers no recipe
    patcher.model.cfgp_test_ctypes = (ctypes.c_uint * 2)()
    with pytest.raises(ShippingError) as info:
        _sample(patcher, 2)
    msg = str(info.value)
    assert "c_uint_Array_2" in msg and "core loader" in msg and "parallel size 1" in msg
    assert current_group() is None or not current_group().alive()


def test_quantized_weights_without_recipe_are_refused_before_any_rank_starts(tiny_ltxv_path, group_down):
    """A weight that is a tensor subclass (what comfy-kitchen's QuantizedTensor is) on a model
    whose loader left no recipe is named in the error; nothing is pickled (pickling such a
    tensor can crash the process). With a recipe the ranks load the file: test_transport_quant.py."""
    from cfg_runtime.errors import ShippingError
    from cfg_runtime.group import current_group

    class Wrapped(torch.Tensor):
        pass

    patcher = load_tiny_ltxv(tiny_ltxv_path)
    layer = patcher.model.diffusion_model.transformer_blocks[0].attn1.to_q
    layer.weight = torch.nn.Parameter(layer.weight.data.as_subclass(Wrapped), requires_grad=False)
    patcher.cached_patcher_init = None  # a custom loader that registers no recipe
    with pytest.raises(ShippingError) as info:
        _sample(patcher, 2)
    msg = str(info.value)
    assert "transformer_blocks.0.attn1.to_q.weight (Wrapped)" in msg and "quantized" in msg and "recipe" in msg
    assert current_group() is None or not current_group().alive()


def test_recipe_copy_is_in_shared_memory_before_any_job(tiny_ltxv_path, group_down):
    """The ranks' copy built from the loader recipe moves into shared memory as it is built (while
    the ranks start), not when the first job is pickled; its weights equal the loader's bit for bit."""
    import cfg_runtime.adapters.models.transport as cm

    patcher = load_tiny_ltxv(tiny_ltxv_path)
    _needs_recipe(patcher)
    token = cm.recipe_token(patcher)
    cm._DELEGATE.clear()
    with torch.inference_mode():  # as ComfyUI runs nodes
        copy = cm._recipe_model(patcher, token)
    assert copy is not patcher.model and _shared(copy)
    assert all(b.is_shared() for b in copy.buffers() if b.numel())
    mine = patcher.model.state_dict()
    for key, value in copy.state_dict().items():
        assert value.dtype == mine[key].dtype and torch.equal(value, mine[key]), key
    assert not _shared(patcher.model)


def test_recipe_copy_starts_building_when_a_node_before_the_sampler_executes(tiny_ltxv_path, group_down, caplog):
    """start_early (what CFG Parallel and the Multi-Branch Guider call) builds the ranks' copy in a
    thread while ComfyUI runs the nodes in between; sampling takes that copy (built once) and
    equals size 1 bit for bit."""
    import logging
    import time

    import cfg_runtime.adapters.models.transport as cm
    from cfg_runtime.adapters.sampling.group_sampling import start_early
    from cfg_runtime.adapters.sampling.guider import ParallelSettings

    patcher = load_tiny_ltxv(tiny_ltxv_path)
    _needs_recipe(patcher)
    patcher.model.cfgp_test_ctypes = (ctypes.c_uint * 2)()  # a dynamic-VRAM-like model: the recipe route
    serial = _sample(patcher, 1)
    token = cm.recipe_token(patcher)
    cm._DELEGATE.clear()
    caplog.set_level(logging.INFO, logger="cfg_parallel")
    start_early(ParallelSettings(world_size=2, devices="cpu", step_timeout_s=120.0), 2, patcher)
    deadline = time.monotonic() + 120
    while token not in cm._DELEGATE and time.monotonic() < deadline:
        time.sleep(0.05)  # the main thread is free meanwhile (ComfyUI would run the next node)
    early = cm._DELEGATE[token]  # built by the node's thread: sampling has not started
    assert torch.equal(_sample(patcher, 2), serial)
    assert cm._DELEGATE[token] is early and _shared(early)
    builds = [r for r in caplog.records if "from its loader recipe" in r.getMessage()]
    assert len(builds) == 1, [r.getMessage() for r in builds]


def test_nothing_is_built_early_for_a_model_the_ranks_can_take_as_it_is(tiny_ltxv_path, group_down):
    """A plain model (ComfyUI without dynamic VRAM) becomes the shared copy itself: no early build."""
    import cfg_runtime.adapters.models.transport as cm

    patcher = load_tiny_ltxv(tiny_ltxv_path)
    route = cm.route_weights(patcher, ("cpu",))
    assert not route.from_recipe
    assert not cm.build_copy_in_background(patcher, route)
