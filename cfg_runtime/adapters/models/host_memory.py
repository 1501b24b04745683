"""The host copy of a model's weights: moved into shared memory at once, page-locked while a GPU rank uploads it.

Parent side, `share_weights`: the ranks' copy built from a loader recipe lives in one block of
shared memory as soon as it is built (while the ranks start), instead of one segment per storage
while the first job is pickled (on the critical path, and one file handle per weight for every
rank to fetch). `loads_into_shared_memory` has ComfyUI's weight load write the file's tensors
straight into that block (the module's weights re-pointed there before the load fills them), so
the copy is written once; what the load does not fill (buffers made at construction) is moved
after it, with ATen's multi-threaded copy, each private storage freed as its bytes are in the block.

Rank side, `HostPins`: a GPU rank that receives a shared-memory base registers its pages with
CUDA (`cudaHostRegister`, as ComfyUI's own `pin_memory` does for offloaded weights) before
ComfyUI loads the model, so the copy to the GPU runs at the host link's DMA rate instead of
through the driver's pageable staging; the registration is dropped once the weights have left
the host copy. Only where ComfyUI itself would pin (`MAX_PINNED_MEMORY` > 0: NVIDIA, no
`--disable-pinned-memory`) and within its pinned-memory limit.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

log = logging.getLogger("cfg_parallel")


def _weights(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor, bool, str]]:
    """(module, name, tensor, is_parameter, state-dict key) for every parameter and buffer the model holds."""
    out = []
    for prefix, module in model.named_modules():
        dotted = f"{prefix}." if prefix else ""
        out += [(module, n, p, True, dotted + n) for n, p in module._parameters.items() if p is not None]
        out += [(module, n, b, False, dotted + n) for n, b in module._buffers.items() if b is not None]
    return out


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.data if isinstance(t, torch.nn.Parameter) else t


_ALIGN = 4096  # each weight's bytes start on a page in the shared block


def share_weights(model: torch.nn.Module, overwritten: frozenset[str] = frozenset()) -> tuple[int, float]:
    """Move the model's private CPU weights into one block of shared memory, in place (tensors keep
    their dtype, shape, strides and aliasing). One block, not one segment per storage: the job then
    carries a single handle per rank, and a GPU rank page-locks it in one call. Storage by storage,
    each private storage freed as its bytes are in the block. Returns (bytes moved, seconds);
    tensor subclasses and storages already shared are left alone. A storage whose every tensor is
    in `overwritten` (state-dict keys about to be loaded in full) is re-pointed without its bytes."""
    t0 = time.monotonic()
    by_storage: dict[int, list] = {}
    for entry in _weights(model):
        data = _plain(entry[2])
        if type(data) is not torch.Tensor or data.device.type != "cpu":
            continue
        storage = data.untyped_storage()
        if storage.is_shared() or storage.nbytes() == 0:
            continue
        by_storage.setdefault(storage.data_ptr(), []).append(entry)
    offsets, total = [], 0
    for entries in by_storage.values():
        offsets.append(total)
        total += -(-_plain(entries[0][2]).untyped_storage().nbytes() // _ALIGN) * _ALIGN
    if not total:
        return 0, time.monotonic() - t0
    block = torch.UntypedStorage._new_shared(total)
    block_bytes = torch.empty(0, dtype=torch.uint8).set_(block)
    moved = 0
    for offset, entries in zip(offsets, by_storage.values()):
        old = _plain(entries[0][2]).untyped_storage()
        if not all(entry[4] in overwritten for entry in entries):
            block_bytes[offset:offset + old.nbytes()].copy_(torch.empty(0, dtype=torch.uint8).set_(old))
        for module, name, tensor, is_param, _ in entries:
            data = _plain(tensor)
            twin = torch.empty(0, dtype=data.dtype).set_(
                block, offset // data.element_size() + data.storage_offset(), data.size(), data.stride())
            if is_param:
                tensor.data = twin
            else:
                module._buffers[name] = twin
        moved += old.nbytes()
        del old
    return moved, time.monotonic() - t0


_CHUNK = 64 << 20  # bytes one thread copies at a time


def copied_in_parallel(module: torch.nn.Module, state_dict: dict, chunk: int = _CHUNK) -> dict:
    """Copy the state dict's tensors into the module's shared-memory weights of the same key, dtype,
    shape and (contiguous) layout, in byte chunks on several threads (plain memcpy, the GIL released:
    the page faults of the file's map and of the new block run side by side instead of one tensor
    after another). Returns the state dict with those entries replaced by the module's own weights,
    which the module's load then copies onto themselves, a no-op; the rest it loads as usual."""
    import ctypes
    from concurrent.futures import ThreadPoolExecutor

    targets = {key: tensor for _, _, tensor, _, key in _weights(module)}
    done, chunks = {}, []
    for key, source in state_dict.items():
        target = targets.get(key)
        data = None if target is None else _plain(target)
        if (type(source) is not torch.Tensor or type(data) is not torch.Tensor or source.device.type != "cpu"
                or data.device.type != "cpu" or source.dtype != data.dtype or source.shape != data.shape
                or not source.is_contiguous() or not data.is_contiguous() or not data.untyped_storage().is_shared()
                or source.numel() == 0):
            continue
        nbytes = source.numel() * source.element_size()
        chunks += [(data.data_ptr() + at, source.data_ptr() + at, min(chunk, nbytes - at))
                   for at in range(0, nbytes, chunk)]
        done[key] = target
    if not done:
        return state_dict
    with ThreadPoolExecutor(max_workers=max(1, min(16, torch.get_num_threads())),
                            thread_name_prefix="cfgp-copy") as pool:
        list(pool.map(lambda c: ctypes.memmove(*c), chunks))
    return {**state_dict, **done}


@contextmanager
def loads_into_shared_memory():
    """While a loader recipe runs in this thread: ComfyUI's weight load (``BaseModel.load_model_weights``
    copying the file's tensors into the new module) writes straight into one block of shared
    memory. The module's weights that the state dict fills in full are re-pointed into the block
    first, without their (still uninitialised) bytes; the rest are moved with theirs. So the copy
    for the ranks is written once, instead of into private memory and then again by
    `share_weights`. Other threads, and loads that assign the file's tensors, are left alone.
    Yields {"load_s": seconds the weight load took}."""
    timing = {"load_s": 0.0}  # seconds in the module's weight load (the copy into the block), for the log
    try:
        import comfy.model_base as model_base
    except ImportError:
        yield timing
        return
    owner, original = threading.get_ident(), model_base.BaseModel.load_model_weights

    def load_model_weights(self, sd, unet_prefix="", *args, **kwargs):
        assign = kwargs.get("assign", args[0] if args else False)
        module = getattr(self, "diffusion_model", None)
        if threading.get_ident() != owner or assign or not isinstance(module, torch.nn.Module):
            return original(self, sd, unet_prefix, *args, **kwargs)
        plain_load = module.load_state_dict

        def load_state_dict(state_dict, *a, **k):
            t0 = time.monotonic()
            if not k.get("assign", False):
                share_weights(module, overwritten=frozenset(state_dict))
                state_dict = copied_in_parallel(module, state_dict)
            try:
                return plain_load(state_dict, *a, **k)
            finally:
                timing["load_s"] += time.monotonic() - t0

        module.load_state_dict = load_state_dict  # this module only, for this call
        try:
            return original(self, sd, unet_prefix, *args, **kwargs)
        finally:
            del module.load_state_dict

    model_base.BaseModel.load_model_weights = load_model_weights
    try:
        yield timing
    finally:
        if model_base.BaseModel.load_model_weights is load_model_weights:
            model_base.BaseModel.load_model_weights = original


def _pin_budget() -> int:
    """Bytes ComfyUI lets this process page-lock now (0: it pins nothing here)."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return 0
    limit = getattr(mm, "MAX_PINNED_MEMORY", 0) or 0
    return int(max(0, limit - getattr(mm, "TOTAL_PINNED_MEMORY", 0)))


@dataclass
class HostPins:
    """Host storages of one model page-locked by this rank (kept alive until unregistered)."""

    storages: dict[int, torch.UntypedStorage] = field(default_factory=dict)
    nbytes: int = 0
    seconds: float = 0.0

    @classmethod
    def for_upload(cls, model: torch.nn.Module, device: torch.device) -> "HostPins":
        """Page-lock the model's shared-memory weights before they are copied to `device` (CUDA only)."""
        pins = cls()
        if device.type != "cuda" or not torch.cuda.is_available():
            return pins
        storages: dict[int, torch.UntypedStorage] = {}
        for _, _, tensor, _, _ in _weights(model):
            data = _plain(tensor)
            if type(data) is torch.Tensor and data.device.type == "cpu" and not data.is_pinned():
                storage = data.untyped_storage()
                if storage.is_shared() and storage.nbytes() > 0:
                    storages.setdefault(storage.data_ptr(), storage)
        total = sum(s.nbytes() for s in storages.values())
        if not storages or total > _pin_budget():
            return pins
        t0 = time.monotonic()
        cudart = torch.cuda.cudart()
        for ptr, storage in storages.items():
            if int(cudart.cudaHostRegister(ptr, storage.nbytes(), 0)) != 0:
                _discard_cuda_error(device)
                log.debug("cfg-parallel: could not page-lock the shared weights; they are copied pageable")
                break
            pins.storages[ptr] = storage
            pins.nbytes += storage.nbytes()
        pins.seconds = time.monotonic() - t0
        return pins

    def release_moved(self, model: torch.nn.Module) -> None:
        """Unregister the storages that no CPU weight of the model uses any more (they went to the GPU)."""
        if not self.storages:
            return
        in_use = {_plain(t).untyped_storage().data_ptr() for _, _, t, _, _ in _weights(model)
                  if type(_plain(t)) is torch.Tensor and _plain(t).device.type == "cpu"}
        self._unregister([ptr for ptr in self.storages if ptr not in in_use])

    def release_all(self) -> None:
        self._unregister(list(self.storages))

    def _unregister(self, ptrs: list[int]) -> None:
        cudart = torch.cuda.cudart() if ptrs else None
        for ptr in ptrs:
            storage = self.storages.pop(ptr)
            cudart.cudaHostUnregister(ptr)
            self.nbytes -= storage.nbytes()


def _discard_cuda_error(device: torch.device) -> None:
    """A refused registration can leave an error queued on the device: run and sync one op to clear it."""
    try:
        torch.ones(1, device=device).add_(1)
        torch.cuda.synchronize(device)
    except RuntimeError:
        pass
