"""Rank side of model transport: several base models held at once, least recently used first out.

A graph may alternate models within one prompt (Wan 2.2's high- and low-noise experts, a base
and a refiner, LTX-2's stage-1 and stage-2 models): each rank keeps every model it was sent,
by base token, with the patcher for its current patches, as long as their weights fit the
memory budget; beyond it the least recently used model goes (a log line, and the rank's
summary lists it). A shared-memory base is the ComfyUI process's single host copy mapped by
every rank, so holding it costs no host memory per rank; a base the rank loaded from its
recipe (quantized, dynamic VRAM) is the rank's own. On the GPU, ComfyUI's own memory
management on the rank decides which held models stay in VRAM, as it does in ComfyUI.

Budget: ``CFG_PARALLEL_MODEL_BUDGET_GB`` (read by each rank; 0 = keep only the model in use),
by default half of the host's physical memory. The model in use is always kept.
"""
from __future__ import annotations

import gc
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ShippingError
from .host_memory import HostPins
from .transport import ModelShipment, release_from_comfy

log = logging.getLogger("cfg_parallel")

BUDGET_ENV = "CFG_PARALLEL_MODEL_BUDGET_GB"


def budget_bytes() -> int:
    """The weights a rank may hold, in bytes (the environment's setting, else half the host's memory)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            return max(0, int(float(text) * 2**30))
        except ValueError:
            raise ShippingError(f"{BUDGET_ENV}={text!r} is not a number of GiB (e.g. 48, or 0 for one model).") \
                from None
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's weights (each storage once; a tensor subclass such as comfy-kitchen's
    QuantizedTensor by the tensors it is made of)."""
    seen: set = set()
    return sum(_tensor_bytes(t, seen) for t in list(model.parameters()) + list(model.buffers()))


def _tensor_bytes(t: torch.Tensor, seen: set) -> int:
    data = t.data if isinstance(t, torch.nn.Parameter) else t
    if type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__"):
        names, _ = data.__tensor_flatten__()
        parts = [getattr(data, n, None) for n in names]
        if all(isinstance(p, torch.Tensor) for p in parts):
            return sum(_tensor_bytes(p, seen) for p in parts)
    try:
        storage = data.untyped_storage()
        key = (storage.data_ptr(), str(data.device))
    except RuntimeError:  # no storage to look at: count the elements
        return data.numel() * data.element_size()
    if key in seen:
        return 0
    seen.add(key)
    return storage.nbytes()


def short(token: str) -> str:
    return token if len(token) <= 20 else f"{token[:16]}…"


@dataclass(frozen=True)
class Held:
    """A base model a rank holds: its patcher for the patches of the last job that used it."""

    patches_token: str
    patcher: Any
    nbytes: int
    pins: HostPins  # its shared-memory pages this rank page-locked for the copy to the GPU (until moved)


class ModelCache:
    """Per-rank cache of base models by token, least recently used first out."""

    def __init__(self, store: dict) -> None:
        state = store.setdefault("comfy_models", {})
        self.held: "OrderedDict[str, Held]" = state.setdefault("held", OrderedDict())
        self.loads: dict[str, int] = state.setdefault("loads", {})  # base loads per token, over the rank's life
        self.evicted: list[str] = []  # by this job, for the budget
        self.released: list[str] = []  # by this job, because ComfyUI no longer holds them
        self.base_loaded = False  # whether the last patcher_for() took a new base (sent, or loaded here)
        self.pinned: HostPins | None = None  # the page-locking of the last new base, if any

    def patcher_for(self, shipment: ModelShipment, device: torch.device) -> tuple[Any, bool]:
        """The patcher for this job's model; True when it was (re)built (a new base or new patches)."""
        import comfy.model_patcher

        token = shipment.base_token
        held = self.held.get(token)
        self.base_loaded = False
        if held is not None:
            self.held.move_to_end(token)
        if held is not None and held.patches_token == shipment.patches_token:
            held.patcher.model_options = comfy.model_patcher.create_model_options_clone(shipment.model_options)
            self._evict(keep=token)
            return held.patcher, False  # options (transformer patches, ...) are cheap: always this job's
        if held is None:
            base, patcher_class = self._new_base(shipment)
            pins = HostPins.for_upload(base, device) if shipment.base_model is not None else HostPins()
            self.pinned = pins
        else:
            base, patcher_class, pins = held.patcher.model, type(held.patcher), held.pins
        patcher = _patcher(patcher_class, base, shipment, device)
        if held is not None:
            release_from_comfy(held.patcher)  # new patches on the same base: unpatch the old ones first
        self.held[token] = Held(shipment.patches_token, patcher, held.nbytes if held else model_bytes(base), pins)
        self._evict(keep=token)
        return patcher, True

    def _new_base(self, shipment: ModelShipment) -> tuple[Any, type]:
        import comfy.model_patcher

        if shipment.base_model is not None:
            base, patcher_class = shipment.base_model, comfy.model_patcher.ModelPatcher
        elif shipment.recipe is not None:  # load it here, as ComfyUI does (quantized, dynamic VRAM)
            recipe = shipment.recipe
            loaded = recipe[0](*recipe[1])
            base = (loaded[recipe[2]] if len(recipe) > 2 else loaded).model
            patcher_class = comfy.model_patcher.CoreModelPatcher
        else:  # the ranks agreed that all hold it before this call: cannot happen
            raise ShippingError(f"rank holds no base model for {shipment.base_token}")
        self.base_loaded = True
        self.loads[shipment.base_token] = self.loads.get(shipment.base_token, 0) + 1
        return base, patcher_class

    def _evict(self, keep: str) -> None:
        budget = budget_bytes()
        while len(self.held) > 1 and sum(h.nbytes for h in self.held.values()) > budget:
            token = next(t for t in self.held if t != keep)
            held = self.held.pop(token)
            release_from_comfy(held.patcher)
            held.pins.release_all()
            self.evicted.append(token)
            gc.collect()
            log.info("cfg-parallel: evicted model %s (%.1f MiB, least recently used) to stay within the %.2f GiB "
                     "model budget (%s)", short(token), held.nbytes / 2**20, budget / 2**30, BUDGET_ENV)

    def release(self, tokens) -> None:
        """Drop the models ComfyUI no longer holds (no job can name them again)."""
        gone = [t for t in tokens if t in self.held]
        for token in gone:
            held = self.held.pop(token)
            release_from_comfy(held.patcher)
            held.pins.release_all()
            self.released.append(token)
            log.info("cfg-parallel: released model %s (ComfyUI no longer holds it)", short(token))
        if gone:
            gc.collect()  # close the shared-memory handles of its weights now

    def drop(self) -> None:
        import comfy.model_management as mm

        pins = [h.pins for h in self.held.values()]
        self.held.clear()
        mm.unload_all_models()
        for p in pins:
            p.release_all()
        mm.soft_empty_cache()

    def settle_pins(self) -> None:
        """After a job: drop the page-locking of host weights that have moved to the GPU."""
        for held in self.held.values():
            held.pins.release_moved(held.patcher.model)

    def holds(self, base_token: str) -> bool:
        """Whether this rank holds the base model `base_token` (a job without its base can run)."""
        return base_token in self.held

    def report(self) -> dict:
        """What the rank's summary says of its models: held (least recently used first), loads, evictions."""
        return {"resident_models": list(self.held), "model_loads": dict(self.loads), "evicted_models": self.evicted,
                "released_models": self.released, "model_bytes": {t: h.nbytes for t, h in self.held.items()}}


def _patcher(patcher_class: type, base, shipment: ModelShipment, device: torch.device):
    import comfy.model_patcher

    if device.type == "cpu" and shipment.patches and shipment.weight_inplace_update:
        raise ShippingError("In-place weight patches cannot share one host copy of the weights; "
                            "turn off in-place weight updates for this model.")
    patcher = patcher_class(base, load_device=device, offload_device=torch.device("cpu"), weight_inplace_update=False)
    patcher.patches = {k: list(v) for k, v in shipment.patches.items()}
    patcher.object_patches = dict(shipment.object_patches)
    patcher.model_options = comfy.model_patcher.create_model_options_clone(shipment.model_options)
    patcher.patches_uuid = shipment.patches_token
    return patcher
