"""CFG Parallel Group Status: what the worker group is doing (ranks, devices, model, memory)."""
from __future__ import annotations

import json

from cfg_runtime.group import current_group, shutdown_group

from .policy_builder import CATEGORY


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def group_report() -> dict:
    group = current_group()
    if group is None:
        return {"state": "not started", "hint": "The group starts with the first prompt at parallel size >= 2."}
    report = group.status()
    report["rss_mib"] = {pid: _rss_mib(pid) for pid in group.pids()}
    return report


class CFGParallelGroupStatus:
    """Shows the worker group's state; can shut it down to free the GPUs."""

    DESCRIPTION = "Reports the worker group (state, devices, pids, memory, jobs run); optionally shuts it down."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("status",)
    FUNCTION = "report"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"shutdown": ("BOOLEAN", {"default": False, "tooltip":
                                          "Stop the workers and free their memory (they restart with the next "
                                          "parallel prompt)."})}}

    @classmethod
    def IS_CHANGED(cls, shutdown):
        return float("nan")  # always re-run: the status changes outside the graph

    def report(self, shutdown):
        if shutdown:
            shutdown_group()
        text = json.dumps(group_report(), indent=2, default=str)
        return {"ui": {"text": [text]}, "result": (text,)}
