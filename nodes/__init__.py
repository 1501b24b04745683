"""ComfyUI-facing nodes: widgets in, runtime objects out. No engine logic here."""
from .group_status import CFGParallelGroupStatus
from .guider import MultiBranchGuiderNode
from .policy_builder import CFGPolicyBuilder

_NODES = {
    "CFGPolicyBuilder": (CFGPolicyBuilder, "CFGPolicy Builder"),
    "MultiBranchGuider": (MultiBranchGuiderNode, "Multi-Branch Guider"),
    "CFGParallelGroupStatus": (CFGParallelGroupStatus, "CFG Parallel Group Status"),
}

try:  # the LTX2 Sampler needs ComfyUI's LTX nodes; the rest works without them
    from .ltx2_sampler import LTX2Sampler

    _NODES["LTX2Sampler"] = (LTX2Sampler, "LTX2 Sampler")
except ImportError as exc:  # pragma: no cover - depends on the ComfyUI version
    import logging

    logging.getLogger("cfg_parallel").warning("LTX2 Sampler not available: %s", exc)

NODE_CLASS_MAPPINGS = {key: cls for key, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {key: name for key, (_, name) in _NODES.items()}
