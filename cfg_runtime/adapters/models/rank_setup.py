"""ComfyUI inside a worker rank, set up from the ComfyUI process's launch options before
anything imports comfy.model_management (which reads them once, when imported)."""
from __future__ import annotations

import logging
import pickle
import sys
from ...group import preload
from .launch_options import LaunchOptions, effective_config, rank_overrides

log = logging.getLogger("cfg_parallel")

_AIMDO_LEVELS = {"DEBUG": "set_log_debug", "DETAIL": "set_log_detail", "INFO": "set_log_info",
                 "WARNING": "set_log_warning", "ERROR": "set_log_error", "CRITICAL": "set_log_critical"}


def init_worker(device: str, data: bytes = b"") -> dict:
    """The rank's worker_init: ComfyUI's arguments become the ComfyUI process's (`data`, from
    launch_options.capture; empty: ComfyUI's defaults), the options of RANK_OVERRIDES follow the
    rank's device, and a GPU rank of a ComfyUI process that runs dynamic VRAM runs it too
    (comfy-aimdo at the console's log level, as main.py sets it). Returns the rank's effective
    configuration (its Ready message carries it to the parent)."""
    import comfy.cli_args

    if "comfy.model_management" in sys.modules:  # pragma: no cover - a hook that imports ComfyUI too early
        log.warning("cfg-parallel: ComfyUI was imported on this rank before its launch options were set")
    options: LaunchOptions | None = pickle.loads(data) if data else None
    args = comfy.cli_args.args
    for name, value in options.args if options is not None else ():
        setattr(args, name, value)
    overridden = rank_overrides(device)
    for name, value in overridden.items():
        if hasattr(args, name):
            setattr(args, name, value)
    index = int(device.split(":")[1]) if ":" in device else 0
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(index)  # before anything asks ComfyUI for "the" device
    aimdo_level = None
    if device.startswith("cuda") and options is not None and options.dynamic_vram:
        aimdo_level = _enable_dynamic_vram(index, args, options.console_level)
    preload.start(_import_comfy, "cfgp-import-comfy")
    report = effective_config()
    report.update(device=device, overridden={k: v for k, v in overridden.items() if hasattr(args, k)},
                  aimdo_log_level=aimdo_level)
    return report


def _enable_dynamic_vram(index: int, args, console_level: str) -> str:
    """Dynamic VRAM for this rank's device as main.py turns it on (headroom, reserve, NVML
    pressure from the launch options); comfy-aimdo logs at the console's level, not at its own
    default, which prints a line per CUDA allocation. Returns the aimdo log level set."""
    import comfy_aimdo.control as control

    reserve = getattr(args, "reserve_vram", None)
    simple = None if reserve is None else int(reserve * 1024 ** 3)
    nvml = not getattr(args, "disable_nvml_pressure", False)
    ok = _first_accepted(control.init, ({"simple_vram_headroom": simple, "nvml_pressure": nvml},
                                        {"simple_vram_headroom": simple}, {}))
    if ok is False:
        raise RuntimeError("comfy-aimdo did not load in the worker, but the ComfyUI process runs dynamic VRAM")
    import comfy.memory_management
    import comfy.model_patcher

    headroom = int(float(getattr(args, "vram_headroom", 0) or 0) * 1024 ** 3)
    try:
        ok = control.init_devices([(index, headroom)])
    except TypeError:  # comfy-aimdo 0.4.9: plain device indices
        ok = control.init_devices([index])
    if not ok:
        raise RuntimeError(f"comfy-aimdo could not initialise cuda:{index} in the worker")
    name = _AIMDO_LEVELS.get(console_level, "set_log_info")
    if not hasattr(control, name):  # older comfy-aimdo: no DETAIL
        name = "set_log_info"
    getattr(control, name)()
    comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    comfy.memory_management.aimdo_enabled = True
    return name.removeprefix("set_log_").upper()


def _first_accepted(func, keyword_sets):
    """func(**kw) with the first keyword set this version of it accepts."""
    for i, kwargs in enumerate(keyword_sets):
        try:
            return func(**kwargs)
        except TypeError:
            if i == len(keyword_sets) - 1:
                raise
    return None


def _import_comfy() -> None:
    """What the first job's unpickling imports (ComfyUI's samplers, model classes, patcher), imported
    while the rank joins the group and waits for its first job instead of after the job arrives.
    The worker waits for this thread before it unpickles the first job (group.preload)."""
    try:
        import comfy.model_base  # noqa: F401
        import comfy.model_patcher  # noqa: F401
        import comfy.samplers  # noqa: F401
    except Exception:  # the job's own import reports it
        pass
