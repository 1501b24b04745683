"""The ComfyUI process's launch options, for its ranks: captured here, applied by ``rank_setup``.

Every field of ComfyUI's own parsed arguments (``comfy.cli_args.args``) travels, so options a
later ComfyUI adds travel too. ``RANK_OVERRIDES`` names the few that a rank sets otherwise,
each with its reason. Options only ``main.py`` or the server read (listening, TLS, front end,
auto-launch, base and model directories, caching of node outputs, the manager) travel as well
and change nothing on a rank: it serves nothing and runs no nodes.
"""
from __future__ import annotations

import enum
import logging
import pickle
from dataclasses import dataclass

log = logging.getLogger("cfg_parallel")

RANK_OVERRIDES: dict[str, str] = {
    "cpu": "follows the rank's own device: set on a CPU rank, cleared on a GPU rank",
    "directml": "a rank computes on its own device ('cpu' or 'cuda:N'), never a DirectML one",
    "cuda_device": "main.py made it CUDA_VISIBLE_DEVICES, which the ranks inherit; a rank takes its own device "
                   "within that set",
    "default_device": "main.py made it the device order in CUDA_VISIBLE_DEVICES, which the ranks inherit",
    "oneapi_device_selector": "main.py made it ONEAPI_DEVICE_SELECTOR, which the ranks inherit",
}


def rank_overrides(device: str) -> dict[str, object]:
    """The values a rank on `device` gives the options of RANK_OVERRIDES."""
    return {name: (device == "cpu" if name == "cpu" else None) for name in RANK_OVERRIDES}


@dataclass(frozen=True)
class LaunchOptions:
    """What a rank needs to run as the ComfyUI process runs."""

    args: tuple[tuple[str, object], ...]  # every field of comfy.cli_args.args, by name
    console_level: str  # ComfyUI's console log level ('INFO', 'DEBUG' with --verbose, ...)
    dynamic_vram: bool  # main.py turned dynamic VRAM (comfy-aimdo) on in the ComfyUI process


def capture() -> bytes:
    """The ComfyUI process's launch options, pickled for GroupSpec.worker_init_data (a group
    started under other options is not reused)."""
    import comfy.cli_args

    fields = []
    for name, value in sorted(vars(comfy.cli_args.args).items()):
        try:
            pickle.dumps(value)
        except Exception:  # pragma: no cover - ComfyUI's parsed options are plain values and enums
            log.warning("cfg-parallel: the launch option %s cannot travel to the ranks; they keep its default", name)
            continue
        fields.append((name, value))
    return pickle.dumps(LaunchOptions(tuple(fields), console_level(), parent_runs_dynamic_vram()))


def console_level() -> str:
    """ComfyUI's console log level name, as main.py derives it from --verbose."""
    import comfy.cli_args as cli

    verbose = getattr(cli.args, "verbose", "INFO")
    if hasattr(cli, "get_console_log_level"):  # 0.29 and later: a list of (LEVEL, FILE) outputs
        return cli.get_console_log_level(verbose)
    return verbose if isinstance(verbose, str) else "INFO"  # 0.3.75: the level itself


def level_number(name: str) -> int:
    """A console level name as a logging level (ComfyUI's DETAIL is 15)."""
    number = logging.getLevelName(name)
    return number if isinstance(number, int) else (15 if name == "DETAIL" else logging.INFO)


def parent_runs_dynamic_vram() -> bool:
    try:
        import comfy.memory_management

        return bool(getattr(comfy.memory_management, "aimdo_enabled", False))
    except ImportError:
        return False


def _plain(value: object) -> object:
    """A launch option's value as JSON can hold it (enums by value, sets sorted)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def effective_config() -> dict:
    """How ComfyUI runs in this process: every launch option, and what ComfyUI made of them
    (attention function, deterministic algorithms, VRAM state, dynamic VRAM, console level).
    The ComfyUI process and each rank report the same, so they can be compared."""
    import comfy.cli_args
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm
    import torch

    return {
        "args": {name: _plain(value) for name, value in sorted(vars(comfy.cli_args.args).items())},
        "attention": getattr(attention.optimized_attention, "__name__", repr(attention.optimized_attention)),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "vram_state": getattr(mm.vram_state, "name", str(mm.vram_state)),
        "dynamic_vram": parent_runs_dynamic_vram(),
        "console_level": console_level(),
    }


def config_differences(parent: dict, rank: dict) -> list[str]:
    """What differs between the ComfyUI process's effective configuration and a rank's, the
    options of RANK_OVERRIDES aside; [] when the rank runs as the ComfyUI process does."""
    out = [f"{key}: {parent.get(key)!r} here, {rank.get(key)!r} on the rank"
           for key in sorted(set(parent) - {"args"}) if parent.get(key) != rank.get(key)]
    theirs = rank.get("args") or {}
    for name, value in sorted((parent.get("args") or {}).items()):
        if name not in RANK_OVERRIDES and theirs.get(name, "<missing>") != value:
            out.append(f"--{name.replace('_', '-')}: {value!r} here, {theirs.get(name, '<missing>')!r} on the rank")
    return out
