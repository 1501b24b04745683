"""The persistent worker group: one process per device, spawned and watched from the ComfyUI
process, which talks to them over pipes with typed messages and never joins a collective.

No ComfyUI. May import: ``parallel``, ``guidance``, ``errors``.
"""
from .handle import JobResult, WorkerGroup
from .registry import current_group, get_group, shutdown_group
from .spec import BACKEND_ENV, GroupSpec, parse_devices
from .worker import RankContext

__all__ = ["BACKEND_ENV", "GroupSpec", "JobResult", "RankContext", "WorkerGroup", "current_group", "get_group",
           "parse_devices", "shutdown_group"]
