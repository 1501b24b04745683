"""The pack's nodes package in a test process, imported under a private name (never as top-level
'nodes', which is ComfyUI's own nodes.py)."""
from __future__ import annotations

import importlib.util
import sys

from .paths import REPO

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
