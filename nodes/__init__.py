"""ComfyUI-facing nodes (V3 API, comfy_api.latest.io): widgets in, runtime objects out.

The mappings are plain literals so that ComfyUI-Manager's node scanner can read the node
names from this file without importing it. Every node is registered once, here (the pack
defines no ``comfy_entrypoint``: ComfyUI reads NODE_CLASS_MAPPINGS first and would ignore
it). The ids before 0.2 (no pack prefix) stay registered as deprecated aliases: saved
workflows load and run; search and the node library hide them.
"""
from cfg_runtime.adapters.sampling.launch_start import start_at_launch, warm_start_at_launch
from cfg_runtime.group.host import sweep_stale_stores

from . import cfg_parallel, group_status, guider, ltx2_sampler, policy_builder, prompt_checks, queue_start, vae_decode

NODE_CLASS_MAPPINGS = {
    "CFGParallelMultiGPU_PolicyBuilder": policy_builder.CFGPolicyBuilder,
    "CFGParallelMultiGPU_LTX2VideoGuidance": policy_builder.LTX2VideoGuidance,
    "CFGParallelMultiGPU_LTX2AudioGuidance": policy_builder.LTX2AudioGuidance,
    "CFGParallelMultiGPU_MultiBranchGuider": guider.MultiBranchGuiderNode,
    "CFGParallelMultiGPU_LTX2Sampler": ltx2_sampler.LTX2Sampler,
    "CFGParallelMultiGPU_GroupStatus": group_status.CFGParallelGroupStatus,
    "CFGParallelMultiGPU_Model": cfg_parallel.CFGParallelModel,
    "CFGParallelMultiGPU_VAEDecode": vae_decode.VAEDecodeMultiGPU,
    # deprecated ids (workflows saved before 0.2)
    "CFGPolicyBuilder": policy_builder.LEGACY["CFGPolicyBuilder"],
    "MultiBranchGuider": guider.LEGACY["MultiBranchGuider"],
    "LTX2Sampler": ltx2_sampler.LEGACY["LTX2Sampler"],
    "CFGParallelGroupStatus": group_status.LEGACY["CFGParallelGroupStatus"],
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CFGParallelMultiGPU_PolicyBuilder": "CFGPolicy Builder",
    "CFGParallelMultiGPU_LTX2VideoGuidance": "LTX-2 Video Guidance (CFG, STG, modality)",
    "CFGParallelMultiGPU_LTX2AudioGuidance": "LTX-2 Audio Guidance (CFG, STG, modality)",
    "CFGParallelMultiGPU_MultiBranchGuider": "Multi-Branch Guider",
    "CFGParallelMultiGPU_LTX2Sampler": "LTX2 Sampler",
    "CFGParallelMultiGPU_GroupStatus": "CFG Parallel Group Status",
    "CFGParallelMultiGPU_Model": "CFG Parallel",
    "CFGParallelMultiGPU_VAEDecode": "VAE Decode (Multi-GPU)",
    "CFGPolicyBuilder": "CFGPolicy Builder",
    "MultiBranchGuider": "Multi-Branch Guider",
    "LTX2Sampler": "LTX2 Sampler",
    "CFGParallelGroupStatus": "CFG Parallel Group Status",
}

# Old id -> new id (the README's migration table; tests check both ids load).
RENAMED = {
    "CFGPolicyBuilder": "CFGParallelMultiGPU_PolicyBuilder",
    "MultiBranchGuider": "CFGParallelMultiGPU_MultiBranchGuider",
    "LTX2Sampler": "CFGParallelMultiGPU_LTX2Sampler",
    "CFGParallelGroupStatus": "CFGParallelMultiGPU_GroupStatus",
}

# what killed ComfyUI processes left (their ranks' rendezvous and temp folders, semaphores): owners gone
sweep_stale_stores()

_SAMPLING = {name for name, cls in NODE_CLASS_MAPPINGS.items() if issubclass(
    cls, (guider.MultiBranchGuiderNode, ltx2_sampler.LTX2Sampler, cfg_parallel.CFGParallelModel))}
# parallel_size 1.5 from a script: refused by ComfyUI's validation with a message (prompt_checks.py)
prompt_checks.register(_SAMPLING)
# a queued prompt that will sample or decode on the group starts it before its first node runs (queue_start.py)
QUEUE_START = dict(
    sampling=_SAMPLING,
    decoding={name for name, cls in NODE_CLASS_MAPPINGS.items() if issubclass(cls, vae_decode.VAEDecodeMultiGPU)},
    policy_nodes={name: cls for name, cls in NODE_CLASS_MAPPINGS.items() if issubclass(cls, (
        policy_builder.CFGPolicyBuilder, policy_builder.LTX2VideoGuidance, policy_builder.LTX2AudioGuidance,
        policy_builder.LEGACY["CFGPolicyBuilder"]))})
queue_start.register(**QUEUE_START)

# the warm fork server the ranks start from (on CUDA machines; CFG_PARALLEL_WARM_START), then
# CFG_PARALLEL_START_AT_LAUNCH: the ranks start now, beside ComfyUI's own start (launch_start.py)
warm_start_at_launch()
start_at_launch()
