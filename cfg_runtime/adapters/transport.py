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
applies them on its device the way ComfyUI does. Anything that cannot travel (a closure
in the options, quantized weights without a recipe) is refused here, before a rank starts.
Worker side: `ModelCache.patcher_for()` rebuilds a ModelPatcher, reusing the base model,
and the patcher itself while the patches are unchanged.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ShippingError
from ..group.shipping import check_shippable, fingerprint

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
    recipe: tuple | None = None  # with base_model None: the rank loads the base itself with this


RANK_DYNAMIC_VRAM_ENV = "CFG_PARALLEL_RANK_DYNAMIC_VRAM"  # set by a ComfyUI process that runs dynamic VRAM


def init_worker(device: str) -> None:
    """Configure ComfyUI in a worker before anything imports comfy.model_management.

    When the ComfyUI process runs 0.29's dynamic VRAM, a GPU rank turns it on too (comfy-aimdo
    for its device, ModelPatcherDynamic as the core patcher): the rank then loads the model
    from its file the way ComfyUI does, with the same numerics."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    comfy.cli_args.args.disable_smart_memory = False
    if device.startswith("cuda") and os.environ.get(RANK_DYNAMIC_VRAM_ENV) == "1":
        _enable_dynamic_vram(int(device.split(":")[1]) if ":" in device else 0)


def _enable_dynamic_vram(index: int) -> None:
    import comfy_aimdo.control

    if not comfy_aimdo.control.init():
        raise RuntimeError("comfy-aimdo did not load in the worker, but the ComfyUI process runs dynamic VRAM")
    import comfy.memory_management
    import comfy.model_patcher

    try:
        ok = comfy_aimdo.control.init_devices([(index, 0)])
    except TypeError:  # older comfy-aimdo: plain device indices
        ok = comfy_aimdo.control.init_devices([index])
    if not ok:
        raise RuntimeError(f"comfy-aimdo could not initialise cuda:{index} in the worker")
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True


def parent_runs_dynamic_vram() -> bool:
    try:
        import comfy.memory_management

        return bool(getattr(comfy.memory_management, "aimdo_enabled", False))
    except ImportError:
        return False


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
    return token


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
class BasePlan:
    """Where the ranks' base model comes from: the model ComfyUI holds, a copy built from the
    loader recipe in this process (shared memory), or the recipe itself, which each rank runs
    (a dynamic-VRAM model for dynamic-VRAM GPU ranks: they map the same file)."""

    token: str
    from_recipe: bool
    ranks_load: bool = False


def plan_base(model_patcher, devices: tuple[str, ...] = ()) -> BasePlan:
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
        return BasePlan(token, from_recipe=True, ranks_load=True)
    dynamic = getattr(model_patcher, "is_dynamic", lambda: False)()
    if dynamic and token is not None and devices and all(d.startswith("cuda") for d in devices) \
            and parent_runs_dynamic_vram() and _stored_dtype_differs(model_patcher.model):
        # The dynamic loader keeps the file's precision for some weights where the plain one
        # rounds every weight to the model dtype (fp8 weight_dtype from a bf16 file): only a
        # dynamic-VRAM rank computes what ComfyUI computes. Each such rank stages its own host copy.
        return BasePlan(token, from_recipe=True, ranks_load=True)
    obstacle = _own_model_obstacle(model_patcher)
    if obstacle is None:
        return BasePlan(base_token(model_patcher), from_recipe=False)
    if token is None:
        raise ShippingError(
            f"The model cannot be sent to the worker processes: {obstacle}, and its loader left no recipe to load "
            f"it again (cached_patcher_init). Load it with a core loader (UNETLoader, CheckpointLoaderSimple), "
            f"start ComfyUI with --disable-dynamic-vram, or run at parallel size 1.")
    return BasePlan(token, from_recipe=True)


_DELEGATE: dict = {}  # token -> pristine non-dynamic model built from the recipe (one entry)


def _recipe_model(model_patcher, token: str):
    """The pristine plain copy of the base model, loaded with ComfyUI's own recipe once per token."""
    model = _DELEGATE.get(token)
    if model is None:
        _DELEGATE.clear()
        recipe = _recipe(model_patcher)
        loaded = recipe[0](*recipe[1], disable_dynamic=True)
        patcher = loaded[recipe[2]] if len(recipe) > 2 else loaded
        model = patcher.model
        if any(p.device.type != "cpu" for p in model.parameters()):
            model.to("cpu")
        quantized = _quantized_weight(model)
        if quantized is not None:
            raise ShippingError(f"The model reloaded from its recipe has quantized weights ({quantized}); run at "
                                f"parallel size 1.")
        _DELEGATE[token] = model
        log.info("cfg-parallel: built the ranks' copy of %s from its loader recipe", type(model).__name__)
    return model


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


def _release_from_comfy(model_patcher, unpatch: bool = True) -> None:
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


def capture(model_patcher, with_base: bool = True, plan: BasePlan | None = None) -> ModelShipment:
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
    plan = plan or plan_base(model_patcher)
    base = recipe = None
    if with_base:
        _release_from_comfy(model_patcher, unpatch=not plan.from_recipe)
        if not plan.from_recipe or plan.ranks_load:
            _DELEGATE.clear()  # another model now: release the previous copy's shared memory
        if plan.ranks_load:
            recipe = _recipe(model_patcher)
            log.info("cfg-parallel: the ranks load the model from its file themselves (dynamic VRAM): %s",
                     next((a for a in recipe[1] if isinstance(a, str)), "?"))
        elif plan.from_recipe:
            base = _recipe_model(model_patcher, plan.token)
        else:
            base = model_patcher.model
            if any(p.device.type != "cpu" for p in base.parameters()):
                base.to("cpu")  # the single host copy that every rank maps
    return ModelShipment(
        base_token=plan.token,
        base_model=base,
        patches_token=patches_token(model_patcher),
        patches=model_patcher.patches,
        object_patches=model_patcher.object_patches,
        model_options=model_patcher.model_options,
        weight_inplace_update=model_patcher.weight_inplace_update,
        recipe=recipe,
    )


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
                raise ModelNotCached(shipment.base_token)
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
            _release_from_comfy(entry[1])  # new patches on the same base: unpatch the old ones first
        self.store["patcher"] = (key, patcher)
        return patcher, True

    def drop(self) -> None:
        import comfy.model_management as mm

        self.store.pop("patcher", None)
        mm.unload_all_models()
        mm.soft_empty_cache()
