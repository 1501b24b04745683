"""Rank side of model transport: the base model by token, and the patcher for the current patches."""
from __future__ import annotations

import torch

from ..errors import ShippingError
from .transport import ModelShipment, release_from_comfy


class ModelCache:
    """Per-rank cache: the base model by token, and the patcher for the current patches."""

    def __init__(self, store: dict) -> None:
        self.store = store.setdefault("comfy_models", {})
        self.base_loaded = False  # whether the last patcher_for() took a new base (sent, or loaded here)

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
        base, patcher_class = shipment.base_model, comfy.model_patcher.ModelPatcher
        self.base_loaded = base is not None or shipment.recipe is not None
        if base is None and shipment.recipe is not None:  # load it here, as ComfyUI does (dynamic VRAM)
            recipe = shipment.recipe
            loaded = recipe[0](*recipe[1])
            base = (loaded[recipe[2]] if len(recipe) > 2 else loaded).model
            patcher_class = comfy.model_patcher.CoreModelPatcher
        elif base is None:
            if entry is None:
                raise ShippingError(f"rank holds no base model for {shipment.base_token}")  # agreed before: cannot happen
            base = entry[1].model
            patcher_class = type(entry[1])
        if device.type == "cpu" and shipment.patches and shipment.weight_inplace_update:
            raise ShippingError("In-place weight patches cannot share one host copy of the weights; "
                                "turn off in-place weight updates for this model.")
        patcher = patcher_class(base, load_device=device, offload_device=torch.device("cpu"),
                                weight_inplace_update=False)
        patcher.patches = {k: list(v) for k, v in shipment.patches.items()}
        patcher.object_patches = dict(shipment.object_patches)
        patcher.model_options = comfy.model_patcher.create_model_options_clone(shipment.model_options)
        patcher.patches_uuid = shipment.patches_token
        if entry is not None:
            release_from_comfy(entry[1])  # new patches on the same base: unpatch the old ones first
        self.store["patcher"] = (key, patcher)
        return patcher, True

    def drop(self) -> None:
        import comfy.model_management as mm

        self.store.pop("patcher", None)
        mm.unload_all_models()
        mm.soft_empty_cache()

    def holds(self, base_token: str) -> bool:
        """Whether this rank holds the base model `base_token` (a job without its base can run)."""
        entry = self.store.get("patcher")
        return entry is not None and entry[0][0] == base_token
