"""Ship a ComfyUI model to the worker ranks, one host copy of the base weights.

Parent side: `capture()` makes sure the base weights are unpatched and on the CPU,
then describes the model as (base model object, patches, object patches, options).
Pickled through torch.multiprocessing, the base weights move into shared memory once
and every rank maps the same pages. Patches (LoRA, ...) travel as tensors and each
rank applies them on its device the way ComfyUI does.
Worker side: `ModelCache.patcher_for()` rebuilds a ModelPatcher, reusing the base
model, and the patcher itself while the patches are unchanged.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ShippingError
from .shipping import check_shippable, fingerprint

log = logging.getLogger("cfg_parallel")

# Model options that replace or reorder the guidance combine: they cannot coexist with a policy.
CONFLICTING_OPTIONS = {
    "sampler_cfg_function": "a custom CFG function (set by a node such as RescaleCFG or a guidance patch)",
    "sampler_pre_cfg_function": "a pre-CFG function (set by a node such as PerpNeg or a guidance patch)",
    "sampler_calc_cond_batch_function": "a custom cond-batch function",
}


class ModelNotCached(RuntimeError):
    """The job left the base model out, but this rank does not hold it (the parent resends it)."""


@dataclass(frozen=True)
class ModelShipment:
    """What a rank needs to rebuild the ComfyUI model (base_model None: the rank holds it already)."""

    base_token: str
    base_model: Any
    patches_token: str
    patches: dict
    object_patches: dict
    model_options: dict
    weight_inplace_update: bool = False


def init_worker(device: str) -> None:
    """Configure ComfyUI in a worker before anything imports comfy.model_management."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    comfy.cli_args.args.disable_smart_memory = False


def base_token(model_patcher) -> str:
    """A stable identity for the base model object ComfyUI holds (new load = new token)."""
    model = model_patcher.model
    token = getattr(model, "_cfgp_token", None)
    if token is None:
        token = uuid.uuid4().hex
        model._cfgp_token = token
    return token


def patches_token(model_patcher) -> str:
    """Changes whenever the weight patches or the object patches (their contents) change."""
    return f"{model_patcher.patches_uuid}:{len(model_patcher.patches)}:{fingerprint(model_patcher.object_patches)}"


def check_model_options(model_options: dict) -> None:
    """Refuse options that would silently change the combine."""
    for key, what in CONFLICTING_OPTIONS.items():
        if model_options.get(key):
            raise ShippingError(
                f"The model carries {what} ('{key}'). The Multi-Branch Guider combines the branches with its "
                f"policy, so that node's effect would be lost: remove it from the graph, or use the matching "
                f"option of the CFGPolicy Builder (guidance rescale, CFG-Zero*).")


def _unpicklable_keys(obj: Any, prefix: str) -> list[str]:
    """Keys (dotted paths) of `obj` that the worker pickler cannot carry."""
    bad = []
    items = obj.items() if isinstance(obj, dict) else []
    for key, value in items:
        try:
            check_shippable(value)
        except Exception as exc:
            if isinstance(value, dict):
                bad.extend(_unpicklable_keys(value, f"{prefix}{key}."))
            else:
                bad.append(f"{prefix}{key} ({type(value).__name__}: {type(exc).__name__}: {exc})")
    return bad


def _release_from_comfy(model_patcher) -> None:
    """Unload the model from ComfyUI's own memory management (unpatches its weights)."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        patcher = loaded.model
        if patcher is not None and patcher.model is model_patcher.model:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
    if model_patcher.backup or model_patcher.object_patches_backup:
        model_patcher.unpatch_model(model_patcher.offload_device)
    mm.soft_empty_cache()  # hand the freed GPU memory back (rank 0 may share this GPU)


def capture(model_patcher, with_base: bool = True) -> ModelShipment:
    """Describe the model for the ranks; raises ShippingError naming what cannot travel.

    with_base=False leaves the base weights out, for ranks that already hold them.
    """
    check_model_options(model_patcher.model_options)
    bad = _unpicklable_keys(model_patcher.model_options, "model_options.")
    bad += _unpicklable_keys({"patches": model_patcher.patches}, "")
    bad += _unpicklable_keys(model_patcher.object_patches, "object_patches.")
    if bad:
        raise ShippingError(
            "These model settings cannot be sent to the worker processes (they are Python closures or objects "
            f"added by other nodes): {', '.join(bad)}. Remove the nodes that add them, or run at parallel size 1.")
    model = model_patcher.model
    if with_base:
        _release_from_comfy(model_patcher)
        if any(p.device.type != "cpu" for p in model.parameters()):
            model.to("cpu")  # the single host copy that every rank maps
    return ModelShipment(
        base_token=base_token(model_patcher),
        base_model=model if with_base else None,
        patches_token=patches_token(model_patcher),
        patches=model_patcher.patches,
        object_patches=model_patcher.object_patches,
        model_options=model_patcher.model_options,
        weight_inplace_update=model_patcher.weight_inplace_update,
    )


class ModelCache:
    """Per-rank cache: the base model by token, and the patcher for the current patches."""

    def __init__(self, store: dict) -> None:
        self.store = store.setdefault("comfy_models", {})

    def patcher_for(self, shipment: ModelShipment, device: torch.device):
        import comfy.model_patcher

        key = (shipment.base_token, shipment.patches_token)
        entry = self.store.get("patcher")
        if entry is not None and entry[0] == key:
            patcher = entry[1]  # options (transformer patches, ...) are cheap: always this job's
            patcher.model_options = comfy.model_patcher.create_model_options_clone(shipment.model_options)
            return patcher, False
        if entry is not None and entry[0][0] != shipment.base_token:
            self.drop()
            entry = None
        base = shipment.base_model
        if base is None:
            if entry is None:
                raise ModelNotCached(shipment.base_token)
            base = entry[1].model
        if device.type == "cpu" and shipment.patches and shipment.weight_inplace_update:
            raise ShippingError("In-place weight patches cannot share one host copy of the weights; "
                                "turn off in-place weight updates for this model.")
        patcher = comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=torch.device("cpu"),
                                                   weight_inplace_update=False)
        patcher.patches = {k: list(v) for k, v in shipment.patches.items()}
        patcher.object_patches = dict(shipment.object_patches)
        patcher.model_options = comfy.model_patcher.create_model_options_clone(shipment.model_options)
        patcher.patches_uuid = shipment.patches_token
        if entry is not None:
            _release_from_comfy(entry[1])  # new patches on the same base: unpatch the old ones first
        self.store["patcher"] = (key, patcher)
        return patcher, True

    def drop(self) -> None:
        import comfy.model_management as mm

        self.store.pop("patcher", None)
        mm.unload_all_models()
        mm.soft_empty_cache()
