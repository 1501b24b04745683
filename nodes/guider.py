"""Multi-Branch Guider: model + conditioning + policy -> GUIDER for SamplerCustomAdvanced."""
from __future__ import annotations

from cfg_runtime.adapters.guider import MultiBranchGuider, ParallelSettings
from cfg_runtime.adapters.model_checks import check_policy_fits_model
from cfg_runtime.errors import PolicyError
from cfg_runtime.parallel.plan import PLANNERS
from cfg_runtime.guidance.policy import CFGPolicy

from .policy_builder import CATEGORY


class MultiBranchGuiderNode:
    """GUIDER that evaluates every branch of a policy, in parallel on a worker group when size >= 2."""

    DESCRIPTION = ("Guides sampling with a CFG policy. Parallel size 1 runs the branches one after another in "
                   "ComfyUI; size N runs them on N worker processes (one per GPU) that keep the model loaded "
                   "between prompts. Connect to SamplerCustomAdvanced.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model."}),
                "positive": ("CONDITIONING", {"tooltip": "Conditioning of the 'cond' branch (and STG/modality passes)."}),
                "policy": ("CFG_POLICY", {"tooltip": "From the CFGPolicy Builder."}),
                "parallel_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
                                  "Worker processes (one per device). 1 = in ComfyUI, no extra model copy. "
                                  "More ranks than branches leaves the extra ranks idle."}),
                "devices": ("STRING", {"default": "", "tooltip":
                            "Empty = the first parallel_size GPUs (or CPU ranks when there is no GPU). "
                            "Or list them: 'cuda:0,cuda:1', or 'cpu'."}),
                "plan": (list(PLANNERS), {"default": "cost_balanced", "tooltip":
                         "How branches map to ranks: cost_balanced weighs the cheaper modality pass; round_robin."}),
                "keep_model_loaded": ("BOOLEAN", {"default": True, "tooltip":
                                      "Keep the model on the workers between prompts (the next prompt starts "
                                      "without reloading)."}),
                "step_timeout_s": ("FLOAT", {"default": 600.0, "min": 5.0, "max": 86400.0, "step": 5.0, "tooltip":
                                   "Seconds without progress before the job is failed and the workers restarted."}),
            },
            "optional": {
                "negative": ("CONDITIONING", {"tooltip": "Conditioning of the 'negative' branch (needed when CFG != 1)."}),
            },
        }

    def get_guider(self, model, positive, policy, parallel_size, devices, plan, keep_model_loaded, step_timeout_s,
                   negative=None):
        if not isinstance(policy, CFGPolicy):
            raise PolicyError("The policy input must come from a CFGPolicy Builder node.")
        check_policy_fits_model(policy, model)
        settings = ParallelSettings(size=parallel_size, devices=devices, strategy=plan,
                                    keep_model_loaded=keep_model_loaded, step_timeout_s=step_timeout_s)
        settings.group_spec()  # fail here, at this node, on a bad device request or timeout (at size 1 too)
        guider = MultiBranchGuider(model, policy, settings)
        guider.set_conds(positive, negative)
        return (guider,)
