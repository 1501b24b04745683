"""Host copies of weights (cfg_runtime/adapters/models/host_memory.py) on the CPU: the move into
shared memory keeps every weight bit for bit, with its dtype, shape, strides and aliasing, and
frees nothing the model still uses; page-locking is for CUDA ranks only."""
from __future__ import annotations

import pickle

import torch

from cfg_runtime.adapters.models.host_memory import HostPins, loads_into_shared_memory, share_weights
from devkit.tiny_models import load_tiny_ltxv


def _storages_shared(model) -> bool:
    return all(t.untyped_storage().is_shared() for t in list(model.parameters()) + list(model.buffers()) if t.numel())


def test_a_comfyui_model_moves_into_shared_memory_bit_for_bit(tiny_ltxv_path):
    patcher = load_tiny_ltxv(tiny_ltxv_path)
    before = {k: v.clone() for k, v in patcher.model.state_dict().items()}
    assert not _storages_shared(patcher.model)
    with torch.inference_mode():  # as ComfyUI runs nodes
        moved, _ = share_weights(patcher.model)
    assert moved == sum(v.numel() * v.element_size() for v in before.values())
    assert _storages_shared(patcher.model)
    assert len({p.untyped_storage().data_ptr() for p in patcher.model.parameters()}) == 1
    after = patcher.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].dtype == value.dtype and after[key].stride() == value.stride(), key
        assert torch.equal(after[key], value), key
    assert all(isinstance(p, torch.nn.Parameter) for p in patcher.model.parameters())
    assert share_weights(patcher.model)[0] == 0  # already shared: nothing moves again


def test_a_load_in_the_builders_thread_writes_the_weights_straight_into_shared_memory(tiny_ltxv_path):
    """ComfyUI's loader under loads_into_shared_memory: the diffusion model's weights are in shared
    memory as loaded (nothing left to move), equal to a plain load bit for bit; another thread's load
    in the meantime is a plain one."""
    import threading

    plain = load_tiny_ltxv(tiny_ltxv_path).model
    others = []
    with torch.inference_mode(), loads_into_shared_memory():
        loaded = load_tiny_ltxv(tiny_ltxv_path).model
        thread = threading.Thread(target=lambda: others.append(load_tiny_ltxv(tiny_ltxv_path).model))
        thread.start()
        thread.join()
    assert _storages_shared(loaded.diffusion_model)
    assert share_weights(loaded.diffusion_model)[0] == 0
    assert not _storages_shared(others[0].diffusion_model)
    mine = plain.state_dict()
    for key, value in loaded.state_dict().items():
        assert value.dtype == mine[key].dtype and torch.equal(value, mine[key]), key
    assert not hasattr(loaded.diffusion_model, "__dict__") or "load_state_dict" not in vars(loaded.diffusion_model)
    import comfy.model_base
    assert comfy.model_base.BaseModel.load_model_weights.__name__ == "load_model_weights"
    assert comfy.model_base.BaseModel.load_model_weights.__qualname__.startswith("BaseModel.")  # restored


def test_views_of_one_storage_stay_views_of_one_storage():
    whole = torch.arange(24, dtype=torch.float32)
    module = torch.nn.Module()
    module.register_buffer("head", whole[:8])
    module.register_buffer("tail", whole[8:].view(4, 4).t())  # a strided view
    module.weight = torch.nn.Parameter(torch.randn(3, 3, dtype=torch.bfloat16), requires_grad=False)
    module.tied = module.weight
    moved, _ = share_weights(module)
    assert moved == 24 * 4 + 9 * 2
    blocks = {t.untyped_storage().data_ptr() for t in (module.head, module.tail, module.weight)}
    assert len(blocks) == 1  # one block of shared memory for the whole model
    assert module.tail.storage_offset() == module.head.storage_offset() + 8 and module.tail.stride() == (1, 4)
    assert module.weight.data_ptr() % 4096 == 0 and module.head.data_ptr() % 4096 == 0
    assert torch.equal(module.tail, whole[8:].view(4, 4).t()) and torch.equal(module.head, whole[:8])
    assert module.tied is module.weight and module.weight.untyped_storage().is_shared()
    module.head.add_(100)  # the model's weights are the shared twin now, not the private original
    assert module.head[0] == 100 and whole[0] == 0


def test_a_shared_model_pickles_to_one_handle():
    from multiprocessing import resource_sharer

    from cfg_runtime.group.shipping import dumps

    model = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(50)])  # 100 weights
    share_weights(model)
    before = len(resource_sharer._resource_sharer._cache)
    blob = dumps(model)
    assert len(resource_sharer._resource_sharer._cache) - before == 1  # one file handle for the receiver to fetch
    assert len(blob) < 64 * 1024  # handles, not the 1.6 MiB of weights
    back = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))


def test_page_locking_is_for_cuda_ranks_only():
    model = torch.nn.Linear(8, 8)
    share_weights(model)
    pins = HostPins.for_upload(model, torch.device("cpu"))
    assert pins.nbytes == 0 and not pins.storages
    pins.release_moved(model)
    pins.release_all()


def test_the_parallel_copy_fills_the_shared_weights_bit_for_bit_and_leaves_the_rest_to_the_load():
    """copied_in_parallel: chunks (here 1,000 bytes) copied on threads into the shared weights of the
    same key, dtype, shape and layout; the state dict then names the module's own weights (their load
    onto themselves changes nothing); what does not match is left for the module's load to convert."""
    from cfg_runtime.adapters.models.host_memory import copied_in_parallel

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(64, 33, dtype=torch.bfloat16), requires_grad=False)
    module.cast = torch.nn.Parameter(torch.zeros(8, 8), requires_grad=False)  # float32; the file has bf16
    module.register_buffer("strided", torch.zeros(6, 4))
    share_weights(module)
    g = torch.Generator().manual_seed(3)
    state = {"weight": torch.randn(64, 33, generator=g).to(torch.bfloat16),
             "cast": torch.randn(8, 8, generator=g).to(torch.bfloat16),
             "strided": torch.randn(4, 6, generator=g).t()}  # not contiguous: left to the load
    given = copied_in_parallel(module, state, chunk=1000)
    assert given["weight"] is module.weight and given["cast"] is state["cast"] and given["strided"] is state["strided"]
    assert torch.equal(module.weight, state["weight"])  # before the module's own load
    module.load_state_dict(given)
    assert torch.equal(module.weight, state["weight"])
    assert torch.equal(module.cast, state["cast"].float()) and torch.equal(module.strided, state["strided"])
    assert module.weight.untyped_storage().is_shared()
