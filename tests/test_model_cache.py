"""The ranks' model cache in process, with real tiny models and ComfyUI's ModelPatcher: several
base models held at once, reused without reloading, least recently used out past the budget."""
from __future__ import annotations

import logging

import pytest
import torch

from support.paths import comfyui_available

pytestmark = pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI (COMFYUI_DIR)")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    import comfy.sd

    from support import tiny_ltx2 as t2

    d = tmp_path_factory.mktemp("cache_models")
    return [comfy.sd.load_diffusion_model(str(t2.build_tiny_wan(d / f"w{i}.safetensors", seed=i))).model
            for i in range(3)]


def shipment(token: str, base, patches_token: str = "p0"):
    from cfg_runtime.adapters.models.transport import ModelShipment

    return ModelShipment(base_token=token, base_model=base, patches_token=patches_token, patches={},
                         object_patches={}, model_options={"transformer_options": {}})


def without_base(s):
    from dataclasses import replace

    return replace(s, base_model=None)


def test_models_stay_held_and_come_back_without_loading(bases, monkeypatch):
    from cfg_runtime.adapters.models.model_cache import BUDGET_ENV, ModelCache, model_bytes

    monkeypatch.setenv(BUDGET_ENV, "64")
    store, cpu = {}, torch.device("cpu")
    a, b = shipment("a", bases[0]), shipment("b", bases[1])
    pa, fresh = ModelCache(store).patcher_for(a, cpu)
    assert fresh and pa.model is bases[0]
    pb, _ = ModelCache(store).patcher_for(b, cpu)
    for _ in range(2):  # alternate: each comes back as it was, nothing loaded
        cache = ModelCache(store)
        assert cache.holds("a") and cache.holds("b")
        assert cache.patcher_for(without_base(a), cpu) == (pa, False) and not cache.base_loaded
        assert ModelCache(store).patcher_for(without_base(b), cpu) == (pb, False)
    report = ModelCache(store).report()
    assert report["model_loads"] == {"a": 1, "b": 1} and report["resident_models"] == ["a", "b"]
    assert report["model_bytes"]["a"] == model_bytes(bases[0]) > 0
    pa2, fresh = ModelCache(store).patcher_for(without_base(replace_patches(a, "p1")), cpu)  # new patches, same base
    assert fresh and pa2 is not pa and pa2.model is bases[0] and ModelCache(store).report()["model_loads"]["a"] == 1


def replace_patches(s, token: str):
    from dataclasses import replace

    return replace(s, patches_token=token)


def test_least_recently_used_goes_past_the_budget(bases, monkeypatch, caplog):
    from cfg_runtime.adapters.models.model_cache import BUDGET_ENV, ModelCache, model_bytes

    two = model_bytes(bases[0]) + model_bytes(bases[1])
    monkeypatch.setenv(BUDGET_ENV, str((two + model_bytes(bases[2]) // 2) / 2**30))  # room for two of the three
    store, cpu = {}, torch.device("cpu")
    s = [shipment(t, m) for t, m in zip("abc", bases)]
    ModelCache(store).patcher_for(s[0], cpu)
    ModelCache(store).patcher_for(s[1], cpu)
    ModelCache(store).patcher_for(without_base(s[0]), cpu)  # a is now the most recently used
    cache = ModelCache(store)
    with caplog.at_level(logging.INFO, logger="cfg_parallel"):
        cache.patcher_for(s[2], cpu)
    assert cache.report()["evicted_models"] == ["b"] and cache.report()["resident_models"] == ["a", "c"]
    assert any("evicted model b" in r.getMessage() and "least recently used" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv(BUDGET_ENV, "0")  # only the model in use
    cache = ModelCache(store)
    cache.patcher_for(without_base(s[0]), cpu)
    assert cache.report()["resident_models"] == ["a"] and cache.report()["evicted_models"] == ["c"]


def test_models_comfyui_dropped_are_released(bases, monkeypatch):
    from cfg_runtime.adapters.models.model_cache import BUDGET_ENV, ModelCache

    monkeypatch.setenv(BUDGET_ENV, "64")
    store, cpu = {}, torch.device("cpu")
    for token, base in zip("ab", bases):
        ModelCache(store).patcher_for(shipment(token, base), cpu)
    cache = ModelCache(store)
    cache.release(("a", "z"))  # z: never held
    assert cache.report()["resident_models"] == ["b"] and cache.report()["released_models"] == ["a"]


def test_the_parent_names_models_it_dropped(tmp_path):
    """A model identified by object (no loader recipe) gets its token listed once ComfyUI drops it."""
    import gc

    import comfy.model_patcher

    from cfg_runtime.adapters.models import transport
    from devkit import tiny_models as tm

    model = comfy.model_patcher.ModelPatcher(tm.tiny_ltxv_module(), torch.device("cpu"), torch.device("cpu"))
    token = transport.base_token(model)
    assert token not in transport.RELEASED
    del model
    gc.collect()
    assert token in transport.RELEASED
    transport.RELEASED.discard(token)
