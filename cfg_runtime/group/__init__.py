"""The persistent worker group: one process per device, spawned and watched from the ComfyUI
process, which talks to them over pipes with typed messages (``protocol``) and never joins a
collective.

No ComfyUI. May import: ``parallel``, ``guidance``, ``errors``.

The names below are loaded on first use: a rank process imports ``group.worker`` (and so this
package) before torch, to report that it runs before the torch import takes its seconds.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "BACKEND_ENV": "spec", "GroupSpec": "spec", "parse_devices": "spec",
    "JobResult": "flight", "WorkerGroup": "handle",
    "current_group": "registry", "get_group": "registry", "prestart": "registry",
    "shutdown_group": "registry",
    "RankContext": "worker",
    "Failure": "protocol", "Log": "protocol", "Phase": "protocol", "Stage": "protocol",
}

__all__ = ["BACKEND_ENV", "Failure", "GroupSpec", "JobResult", "Log", "Phase", "RankContext", "Stage", "WorkerGroup",
           "current_group", "get_group", "parse_devices", "prestart", "shutdown_group"]

if TYPE_CHECKING:
    from .flight import JobResult
    from .handle import WorkerGroup
    from .protocol import Failure, Log, Phase, Stage
    from .registry import current_group, get_group, prestart, shutdown_group
    from .spec import BACKEND_ENV, GroupSpec, parse_devices
    from .worker import RankContext


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
