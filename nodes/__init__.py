"""ComfyUI-facing nodes: widgets in, runtime objects out. No engine logic here.

The mappings are plain literals so that ComfyUI-Manager's node scanner can read the node
names from this file without importing it.
"""
from .cfg_parallel import CFGParallelModel
from .group_status import CFGParallelGroupStatus
from .guider import MultiBranchGuiderNode
from .ltx2_sampler import LTX2Sampler
from .policy_builder import CFGPolicyBuilder

NODE_CLASS_MAPPINGS = {
    "CFGPolicyBuilder": CFGPolicyBuilder,
    "MultiBranchGuider": MultiBranchGuiderNode,
    "LTX2Sampler": LTX2Sampler,
    "CFGParallelGroupStatus": CFGParallelGroupStatus,
    "CFGParallel_Model": CFGParallelModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CFGPolicyBuilder": "CFGPolicy Builder",
    "MultiBranchGuider": "Multi-Branch Guider",
    "LTX2Sampler": "LTX2 Sampler",
    "CFGParallelGroupStatus": "CFG Parallel Group Status",
    "CFGParallel_Model": "CFG Parallel",
}
