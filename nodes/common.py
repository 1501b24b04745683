"""What every node of the pack shares: the V3 schema helper, categories beside core's, the
pack's node ids and their deprecated aliases (the ids saved workflows from before 0.2 hold).

ComfyUI 0.3.75 and 0.29 both ship ``comfy_api.latest.io``; they differ in a few Schema
fields (0.29 adds ``search_aliases``, ``essentials_category``, ...) and in where core files
its guiders and samplers (0.3.75: ``sampling/custom_sampling/guiders``, 0.29:
``model/sampling/guiders``). ``schema()`` passes a field only where this ComfyUI has it, and
the categories are read from core's own CFGGuider and SamplerCustomAdvanced.
"""
from __future__ import annotations

import dataclasses
import sys

from comfy_api.latest import io

PACK = "comfyui-cfg-parallel"
PREFIX = "CFGParallelMultiGPU_"

# Search words for ComfyUI's node search. Frontend 1.47 (ComfyUI 0.29) reads
# ``search_aliases``; frontend 1.32 (0.3.75) searches the node id and display name only
# (Fuse, extended search: every word must match one of them, within its first ~30
# characters at threshold 0.3), which is why the pack prefix carries "Parallel" and
# "MultiGPU": "parallel", "multi gpu" and "gpu" find every node there too.
ALIASES_COMMON = ["multi gpu", "multi-gpu", "multigpu", "parallel", "gpu", "cfg parallel", "cfg split",
                  "distributed", "worker group"]

# Attributes ComfyNode fills from the schema the first time it is read; a subclass (the
# deprecated aliases) must start without them or it inherits its parent's.
_SCHEMA_CACHE = sorted({k for base in io.ComfyNode.__mro__ for k in vars(base)
                        if k.startswith("_") and k[1:2].isupper() and k.upper() == k
                        and getattr(io.ComfyNode, k) is None})


def _core_category(node_id: str, fallback: str) -> str:
    """The category core gives ``node_id`` in this ComfyUI (its menu path)."""
    comfy_nodes = sys.modules.get("nodes")  # ComfyUI's nodes.py, when ComfyUI runs (never imported from here)
    try:
        cls = getattr(comfy_nodes, "NODE_CLASS_MAPPINGS", {}).get(node_id)
        if cls is not None:
            return getattr(cls, "CATEGORY", None) or cls.GET_SCHEMA().category
    except Exception:  # ComfyUI not fully imported (unit tests): the 0.3.75 names
        pass
    return fallback


def categories() -> dict[str, str]:
    guiders = _core_category("CFGGuider", "sampling/custom_sampling/guiders")
    custom = _core_category("SamplerCustomAdvanced", "sampling/custom_sampling")
    return {"guiders": guiders, "samplers": custom, "multigpu": "advanced/multigpu"}


# A split widget (sequence_split, batch_split): off = no split, auto = the planner's layout, N = groups of N ranks
# (sequence) or N groups (batch); the node's tooltip says which. One option list, so the two read alike.
SPLIT_OPTIONS = ["off", "auto", "2", "3", "4", "8"]


def split_input(name: str, tooltip: str) -> io.Combo.Input:
    """A split widget: a combo of SPLIT_OPTIONS, optional, default off."""
    return io.Combo.Input(name, options=SPLIT_OPTIONS, default="off", optional=True, tooltip=tooltip)


_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}


def schema(**fields) -> io.Schema:
    """io.Schema with the fields this ComfyUI knows (unknown optional ones are dropped)."""
    return io.Schema(**{k: v for k, v in fields.items() if k in _SCHEMA_FIELDS})


def deprecated_alias(cls: type, old_id: str, old_display_name: str | None = None) -> type:
    """A copy of ``cls`` registered under ``old_id``: saved workflows that name it still load
    and run; hidden from search and the node library (deprecated), so new graphs use ``cls``."""

    def define_schema(_cls):
        s = cls.define_schema()
        s = dataclasses.replace(s, node_id=old_id, is_deprecated=True,
                                display_name=old_display_name or s.display_name)
        if "search_aliases" in _SCHEMA_FIELDS:
            s = dataclasses.replace(s, search_aliases=[])
        return s

    attrs = {k: None for k in _SCHEMA_CACHE}
    attrs.update(define_schema=classmethod(define_schema), __doc__=f"Deprecated id of {cls.__name__} (old workflows).",
                 __module__=cls.__module__, __qualname__=old_id)
    return type(old_id, (cls,), attrs)
