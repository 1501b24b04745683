"""Ship a ComfyUI model to the worker ranks, one host copy of the base weights.

Parent side: `capture()` describes the model as (base model, patches, object patches,
options). The base model is a plain, unpatched, CPU-resident torch module; pickled
through torch.multiprocessing its weights move into shared memory once and every rank
maps the same pages. Which module that is:

* the model ComfyUI holds, when it is a plain module (ComfyUI 0.3.75; 0.29 without
  dynamic VRAM): its weights become the shared copy, ComfyUI keeps using them;
* otherwise (0.29's dynamic VRAM: the model carries comfy-aimdo ctypes state and its
  weights alias aimdo's memory-mapped file), a pristine non-dynamic copy built with the
  loader's own recipe (`cached_patcher_init` with disable_dynamic=True), once per recipe;
* for a dynamic-VRAM model whose stored weights differ in dtype from the model's (fp8
  weight_dtype on a bf16 file), no module at all: dynamic-VRAM GPU ranks run the recipe
  themselves, since only ComfyUI's dynamic loader computes ComfyUI's numbers there;
* for a model with quantized weights (comfy-kitchen QuantizedTensor: scaled-fp8 and
  mixed-precision `comfy_quant` checkpoints), no module either: every rank runs the recipe
  (its layers are classes local to comfy.ops.mixed_precision_ops, which pickle cannot name).

The base identity (token) is the recipe and the file's size and mtime when ComfyUI
recorded one: the same file loaded again with the same options is the same model to the
ranks, nothing is sent again. Patches (LoRA, ...) travel as tensors and each rank
applies them on its device the way ComfyUI does; closures in the options (guidance nodes)
travel by value (group/shipping.py). Anything that cannot travel (an object that cannot be
pickled even so, quantized weights without a recipe) is refused here, before a rank starts.
The rank side is model_cache.py.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch

from ...errors import ShippingError
from ...group.shipping import check_shippable, fingerprint
from .core_cfg import check_model_options
from .host_memory import loads_into_shared_memory, share_weights
from .launch_options import parent_runs_dynamic_vram

log = logging.getLogger("cfg_parallel")

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
    recipe: tuple | None = None  # with base_model None: the rank loads the base itself with this


def _recipe(model_patcher) -> tuple | None:
    """ComfyUI 0.29's loader recipe for this model: (loader, args[, index]) or None."""
    recipe = getattr(model_patcher, "cached_patcher_init", None)
    return recipe if isinstance(recipe, tuple) and len(recipe) >= 2 and callable(recipe[0]) else None


def _file_stamps(args: tuple) -> tuple:
    return tuple((a, st.st_size, st.st_mtime_ns) for a in args if isinstance(a, str) and os.path.isfile(a)
                 for st in [os.stat(a)])


def recipe_token(model_patcher) -> str | None:
    """Token of the loader recipe (loader, file, options, file size and mtime), or None."""
    recipe = _recipe(model_patcher)
    if recipe is None:
        return None
    try:
        return "recipe:" + fingerprint((recipe, _file_stamps(recipe[1])))
    except Exception:  # options that cannot be pickled (custom operations): identity of the object instead
        return None


def base_token(model_patcher) -> str:
    """A stable identity for the base model: its loader recipe, else the model object ComfyUI holds."""
    token = recipe_token(model_patcher)
    if token is not None:
        return token
    model = model_patcher.model
    token = getattr(model, "_cfgp_token", None)
    if token is None:
        token = uuid.uuid4().hex
        model._cfgp_token = token
        weakref.finalize(model, RELEASED.add, token)  # ComfyUI dropped it: the ranks may drop their copy
    return token


# Tokens of models (identified by object, no recipe) that ComfyUI no longer holds: no job can
# name them again, so the ranks release them (group_sampling sends them with the next job).
RELEASED: set[str] = set()


def _quantized_weight(model) -> str | None:
    """Name and type of the first weight that is a tensor subclass (comfy-kitchen QuantizedTensor, ...)."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        data = t.data if isinstance(t, torch.nn.Parameter) else t
        if type(data) is not torch.Tensor:
            return f"{name} ({type(data).__name__})"
    return None


def _mapped_from_file(model) -> bool:
    """Weights that alias a memory-mapped file (0.29's aimdo loader) cannot move to shared memory."""
    return any(hasattr(p.untyped_storage(), "_comfy_tensor_mmap_refs") for p in model.parameters())


def _own_model_obstacle(model_patcher) -> str | None:
    """Why the model ComfyUI holds cannot itself be the shared copy (None: it can)."""
    if getattr(model_patcher, "is_dynamic", lambda: False)():
        return "it is managed by ComfyUI's dynamic VRAM (ModelPatcherDynamic)"
    if _mapped_from_file(model_patcher.model):
        return "its weights are mapped from the model file by comfy-aimdo"
    try:
        check_shippable(model_patcher.model)
    except Exception as exc:
        return f"it carries state that cannot be pickled ({type(exc).__name__}: {exc})"
    return None


def _stored_dtype_differs(model) -> bool:
    """Weights held in another dtype than the model computes in (dynamic VRAM keeps the file's)."""
    dtype = model.get_dtype() if hasattr(model, "get_dtype") else None
    return dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point())


@dataclass(frozen=True)
class WeightRoute:
    """Where the ranks' base model comes from: the model ComfyUI holds, a copy built from the
    loader recipe in this process (shared memory), or the recipe itself, which each rank runs
    (a dynamic-VRAM model for dynamic-VRAM GPU ranks: they map the same file)."""

    token: str
    from_recipe: bool
    ranks_load: bool = False


def route_weights(model_patcher, devices: tuple[str, ...] = ()) -> WeightRoute:
    """Decide how the base weights travel; raises ShippingError (before any rank starts) if they cannot."""
    quantized = _quantized_weight(model_patcher.model)
    token = recipe_token(model_patcher)
    if quantized is not None:
        if token is None:
            raise ShippingError(
                f"The model has quantized weights (e.g. {quantized}: a scaled-fp8 / mixed-precision checkpoint) and "
                f"its loader left no recipe to load it again (cached_patcher_init), so the worker processes cannot "
                f"get it. Load it with a core loader (UNETLoader, CheckpointLoaderSimple), use a checkpoint with "
                f"plain weights (bf16/fp16, or weight_dtype fp8_e4m3fn in the loader), or run at parallel size 1.")
        # comfy-kitchen QuantizedTensor parameters cannot be pickled (torch.multiprocessing
        # segfaults on the wrapper tensor): every rank loads the file with the loader's recipe.
        return WeightRoute(token, from_recipe=True, ranks_load=True)
    dynamic = getattr(model_patcher, "is_dynamic", lambda: False)()
    if dynamic and token is not None and devices and all(d.startswith("cuda") for d in devices) \
            and parent_runs_dynamic_vram() and _stored_dtype_differs(model_patcher.model):
        # The dynamic loader keeps the file's precision for some weights where the plain one
        # rounds every weight to the model dtype (fp8 weight_dtype from a bf16 file): only a
        # dynamic-VRAM rank computes what ComfyUI computes. Each such rank stages its own host copy.
        return WeightRoute(token, from_recipe=True, ranks_load=True)
    obstacle = _own_model_obstacle(model_patcher)
    if obstacle is None:
        return WeightRoute(base_token(model_patcher), from_recipe=False)
    if token is None:
        raise ShippingError(
            f"The model cannot be sent to the worker processes: {obstacle}, and its loader left no recipe to load "
            f"it again (cached_patcher_init). Load it with a core loader (UNETLoader, CheckpointLoaderSimple), "
            f"start ComfyUI with --disable-dynamic-vram, or run at parallel size 1.")
    return WeightRoute(token, from_recipe=True)


_DELEGATE: dict = {}  # token -> pristine non-dynamic model built from the recipe (one entry)
_DELEGATE_LOCK = threading.Lock()  # one build at a time: a second asker waits for it and takes it


def _recipe_model(model_patcher, token: str):
    """The pristine plain copy of the base model, loaded with ComfyUI's own recipe once per token."""
    with _DELEGATE_LOCK:
        model = _DELEGATE.get(token)
        if model is None:
            _DELEGATE.clear()
            t0 = time.monotonic()
            recipe = _recipe(model_patcher)
            with loads_into_shared_memory() as timing:  # the file's weights land in shared memory once
                loaded = recipe[0](*recipe[1], disable_dynamic=True)
            patcher = loaded[recipe[2]] if len(recipe) > 2 else loaded
            model = patcher.model
            if any(p.device.type != "cpu" for p in model.parameters()):
                model.to("cpu")
            quantized = _quantized_weight(model)
            if quantized is not None:
                raise ShippingError(f"The model reloaded from its recipe has quantized weights ({quantized}); run "
                                    f"at parallel size 1.")
            shared_bytes, shared_s = share_weights(model)  # what the load left private; not in the job's pickling
            _DELEGATE[token] = model
            log.info("cfg-parallel: built the ranks' copy of %s from its loader recipe in %.1f s (loaded into "
                     "shared memory in %.1f s of it; %.2f GiB moved there after the load, in %.1f s)",
                     type(model).__name__, time.monotonic() - t0, timing["load_s"], shared_bytes / 2**30, shared_s)
    return model


def build_copy_in_background(model_patcher, route: WeightRoute) -> bool:
    """Start building the ranks' recipe copy in a thread now (a node before the sampler executes),
    so that it is built while ComfyUI runs the nodes in between (text encoders, the VAE load);
    sampling takes it when it is ready, or waits for the build under way. A failed build here is
    left to sampling, which builds it again and reports what went wrong. True if a build started."""
    if not route.from_recipe or route.ranks_load or route.token in _DELEGATE:
        return False

    def build() -> None:
        try:
            with torch.inference_mode():  # as ComfyUI runs nodes (thread-local, so set here)
                _recipe_model(model_patcher, route.token)
        except Exception as exc:  # noqa: BLE001 (sampling reports it)
            log.debug("cfg-parallel: the early copy of the model failed (%s: %s); sampling builds it",
                      type(exc).__name__, exc)

    threading.Thread(target=build, name="cfg-parallel recipe copy", daemon=True).start()
    return True


_PATCH_DIGESTS: dict = {}  # (patches_uuid, count) -> digest of those weight patches' contents


def patches_token(model_patcher) -> str:
    """What the weight patches and object patches are, by content: a patcher that ComfyUI built
    again with the same LoRAs and the same ModelSampling has the same token, so the ranks keep
    the patched model they hold (ComfyUI gives every patcher a new patches_uuid; the content
    digest is computed once per patches_uuid)."""
    key = (model_patcher.patches_uuid, len(model_patcher.patches))
    digest = _PATCH_DIGESTS.get(key)
    if digest is None:
        digest = fingerprint(model_patcher.patches) if model_patcher.patches else "none"
        if len(_PATCH_DIGESTS) >= 64:
            _PATCH_DIGESTS.clear()
        _PATCH_DIGESTS[key] = digest
    return f"{digest}:{fingerprint(model_patcher.object_patches)}"


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


def release_from_comfy(model_patcher, unpatch: bool = True) -> None:
    """Unload the model from ComfyUI's own memory management (and unpatch its weights)."""
    import comfy.model_management as mm

    for loaded in list(mm.current_loaded_models):
        patcher = loaded.model
        if patcher is not None and patcher.model is model_patcher.model:
            loaded.model_unload()
            mm.current_loaded_models.remove(loaded)
    if unpatch and (model_patcher.backup or model_patcher.object_patches_backup):
        model_patcher.unpatch_model(model_patcher.offload_device)
    mm.soft_empty_cache()  # hand the freed GPU memory back (rank 0 may share this GPU)


def capture(model_patcher, route: WeightRoute, node: str = "the Multi-Branch Guider") -> ModelShipment:
    """Describe the model for the ranks without its base weights (for ranks that hold them);
    raises ShippingError naming what cannot travel. `with_base` adds the weights."""
    bad = _unpicklable_keys(model_patcher.model_options, "model_options.")
    bad += _unpicklable_keys({"patches": model_patcher.patches}, "")
    bad += _unpicklable_keys(model_patcher.object_patches, "object_patches.")
    if bad:
        raise ShippingError(
            "These model settings cannot be sent to the worker processes (objects added by other nodes that "
            f"cannot be pickled, even by value): {', '.join(bad)}. Remove the nodes that add them, or set {node} to "
            f"parallel size 1.")
    return ModelShipment(
        base_token=route.token,
        base_model=None,
        patches_token=patches_token(model_patcher),
        patches=model_patcher.patches,
        object_patches=model_patcher.object_patches,
        model_options=model_patcher.model_options,
        weight_inplace_update=model_patcher.weight_inplace_update,
    )


def with_base(shipment: ModelShipment, model_patcher, route: WeightRoute) -> ModelShipment:
    """The shipment with the base weights (shared memory) or the recipe the ranks load them with."""
    release_from_comfy(model_patcher, unpatch=not route.from_recipe)
    if not route.from_recipe or route.ranks_load:
        with _DELEGATE_LOCK:
            _DELEGATE.clear()  # another model now: release the previous copy's shared memory
    if route.ranks_load:
        recipe = _recipe(model_patcher)
        log.info("cfg-parallel: the ranks load the model from its file themselves (dynamic VRAM): %s",
                 next((a for a in recipe[1] if isinstance(a, str)), "?"))
        return replace(shipment, recipe=recipe)
    if route.from_recipe:
        return replace(shipment, base_model=_recipe_model(model_patcher, route.token))
    base = model_patcher.model
    if any(p.device.type != "cpu" for p in base.parameters()):
        base.to("cpu")  # the single host copy that every rank maps
    base.share_memory()  # in place (ComfyUI keeps using it), now while the ranks start: not when the job is pickled
    return replace(shipment, base_model=base)
