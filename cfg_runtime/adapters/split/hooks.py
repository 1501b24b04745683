"""ComfyUI's per-call hooks, put into a copy of the model options (the model never changes)."""
from __future__ import annotations

import comfy.patcher_extension

WRAPPER_KEY = "cfg_parallel_sequence"


def add_wrapper(model_options: dict, wrapper) -> dict:
    """A copy of ``model_options`` with ``wrapper`` as its innermost diffusion-model wrapper."""
    options = comfy.patcher_extension.copy_nested_dicts(model_options)
    comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                                 wrapper, options, is_model_options=True)
    return options


def with_block_patches(model_options: dict, patches: dict) -> dict:
    """A copy of ``model_options`` whose ``patches_replace["dit"]`` holds ``patches`` (key -> patch);
    each patch gets the one that was there before through its ``inner``."""
    options = comfy.patcher_extension.copy_nested_dicts(model_options)
    to = options.setdefault("transformer_options", {})
    replace = to.setdefault("patches_replace", {})
    dit = dict(replace.get("dit") or {})
    for key, make in patches.items():
        dit[key] = make(dit.get(key))
    replace["dit"] = dit
    return options
