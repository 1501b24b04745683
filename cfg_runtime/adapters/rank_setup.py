"""ComfyUI's configuration inside a worker rank, set before anything imports comfy.model_management."""
from __future__ import annotations

import os
import threading

RANK_DYNAMIC_VRAM_ENV = "CFG_PARALLEL_RANK_DYNAMIC_VRAM"  # set by a ComfyUI process that runs dynamic VRAM


def init_worker(device: str) -> None:
    """Configure ComfyUI in a worker before anything imports comfy.model_management.

    When the ComfyUI process runs 0.29's dynamic VRAM, a GPU rank turns it on too (comfy-aimdo
    for its device, ModelPatcherDynamic as the core patcher): the rank then loads the model
    from its file the way ComfyUI does, with the same numerics."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    comfy.cli_args.args.disable_smart_memory = False
    index = int(device.split(":")[1]) if ":" in device else 0
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(index)  # before anything asks ComfyUI for "the" device
        if os.environ.get(RANK_DYNAMIC_VRAM_ENV) == "1":
            _enable_dynamic_vram(index)
    threading.Thread(target=_import_comfy, name="cfgp-import-comfy", daemon=True).start()


def _import_comfy() -> None:
    """What the first job's unpickling imports (ComfyUI's samplers, model classes, patcher), imported
    while the rank joins the group and waits for its first job instead of after the job arrives.
    Python's import lock makes the job wait for a module this thread is still importing."""
    try:
        import comfy.model_base  # noqa: F401
        import comfy.model_patcher  # noqa: F401
        import comfy.samplers  # noqa: F401
    except Exception:  # the job's own import reports it
        pass


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
