"""The keys under which the CFG Parallel node's sampling wrappers sit in a model's options."""
from __future__ import annotations

import comfy.patcher_extension as pe

WRAPPER_KEY = "cfg_parallel"  # GroupSampleWrapper: the model's samplings run as a policy's branches
MASK_KEY = "cfg_parallel_mask"  # UseMask: outer_sample gets the denoise mask sample() prepared
OUTER = pe.WrappersMP.OUTER_SAMPLE
