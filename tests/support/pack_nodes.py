"""The pack's nodes package in a test process, imported under a private name (never as top-level
'nodes', which is ComfyUI's own nodes.py)."""
from __future__ import annotations

import importlib.util
import sys

from devkit.tiny_models import tiny_ltxv_graph

from .paths import REPO
from .tiny_ltx2 import POLICY_DEFAULTS

PRIVATE_NAME = "cfgp_nodes_under_test"


def pack_nodes():
    """The pack's `nodes` package (imported once per process)."""
    if PRIVATE_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PRIVATE_NAME, REPO / "nodes" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "nodes")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PRIVATE_NAME] = module
        spec.loader.exec_module(module)
    return sys.modules[PRIVATE_NAME]


def guider_graph(seed: int, size: int, cfg: float, slow_s: float, prefix: str) -> dict:
    """The tiny LTX-Video graph under the Multi-Branch Guider (CFGPolicy Builder's `standard_cfg` at `cfg`,
    `size` CPU ranks), with a test node that sleeps `slow_s` seconds on the conditioning first."""
    g = tiny_ltxv_graph(seed=seed, steps=2, width=64, height=64, length=9, prefix=prefix)
    g["30"] = {"class_type": "CFGPTestSlowConditioning", "inputs": {"conditioning": ["2", 0], "seconds": slow_s}}
    g["31"] = {"class_type": "CFGPolicyBuilder", "inputs": {**POLICY_DEFAULTS, "preset": "standard_cfg", "cfg": cfg}}
    g["7"] = {"class_type": "CFGParallelMultiGPU_MultiBranchGuider", "inputs": {
        "model": ["1", 0], "positive": ["30", 0], "negative": ["3", 0], "policy": ["31", 0],
        "parallel_size": size, "devices": "cpu", "plan": "cost_balanced", "keep_model_loaded": True,
        "step_timeout_s": 120.0}}
    return g
