"""The runtime of comfyui-cfg-parallel, in four layers; each imports only the layers under it.

    adapters/   ComfyUI seam: the guider, the rank-side sampling job, model transport,
                LTX-2 per-call options and pipeline. The only layer that imports ``comfy``.
    group/      the persistent worker group: device spec, spawn, typed messages, deadlines,
                teardown, pickling for the pipes. Plain Python + torch; no ComfyUI.
    parallel/   one guided evaluation on many ranks: branch plans, the prediction
                exchange (all-gather), the dispatcher. torch and torch.distributed only.
    guidance/   what a step computes from the branch predictions: policies, rules,
                presets, the LTX-2 multimodal formula. Plain torch.

``errors`` sits under all of them. docs/ARCHITECTURE.md shows the layers and the life of
one prompt through them.
"""
