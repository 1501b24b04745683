"""What the warm fork server imports while ComfyUI starts (``group.warm_start``): the modules a rank
imports on its way to its first job that can be imported before the rank has a device, none of which
touches a GPU. ComfyUI's own model code is not among them: ``comfy.model_management`` sets up the
device when imported, so the rank imports it after the fork, with its launch options set.

Imported by the server, by name; each module is optional (one that fails is left to the rank).
"""
from __future__ import annotations

import importlib

WARM_MODULES = (
    "torch", "torch.distributed", "torch.multiprocessing",
    "torch._dynamo",  # comfy-kitchen (ComfyUI's quantization kernels) imports it: about a second
    "numpy", "safetensors.torch", "einops", "psutil", "PIL.Image",
    "scipy.stats", "torchsde",  # comfy.samplers (k-diffusion)
    "transformers",  # ComfyUI's text-encoder modules, which some model classes import
    "cfg_runtime.group.worker", "cfg_runtime.parallel.exchange", "cfg_runtime.adapters.models.launch_options",
)


def import_all(names: tuple[str, ...] = WARM_MODULES) -> list[str]:
    """Import each module; the names that failed."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (the rank imports it again and reports what is wrong)
            failed.append(name)
    return failed


FAILED = import_all()
