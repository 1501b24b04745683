"""LTX2 Sampler: the whole LTX-2 job (one or two stages) in one node, on the worker group."""
from __future__ import annotations

from cfg_runtime.adapters.guider import ParallelSettings
from cfg_runtime.errors import PolicyError
from cfg_runtime.adapters.ltx_pipeline import DISTILLED_STAGE2_SIGMAS, StagePlan, parse_sigmas, run_ltx2
from cfg_runtime.guidance.policy import CFGPolicy

from .policy_builder import CATEGORY


class LTX2Sampler:
    """Stage 1 guided with the policy on the group; optional upsample + distilled stage 2 (cond only)."""

    DESCRIPTION = ("Runs LTX-2 sampling in one node. Stage 1 evaluates the policy's branches (cond, negative, STG, "
                   "modality) in parallel on the worker group. two_stage then upsamples the video latent, joins "
                   "the stage-1 audio again and refines with stage2_model and the distilled sigmas. Stage 2 has "
                   "one branch, so it runs on one rank while the others wait.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("latent", "stage1_latent")
    OUTPUT_TOOLTIPS = ("The final audio+video latent.", "The stage-1 latent (before upsampling).")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "LTX-2 (audio+video) or LTX-Video model for stage 1."}),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "policy": ("CFG_POLICY", {"tooltip": "Usually the ltx2_multimodal preset of the CFGPolicy Builder."}),
                "latent": ("LATENT", {"tooltip": "Audio+video latent (LTXVConcatAVLatent) or a video latent."}),
                "sampler": ("SAMPLER",),
                "sigmas": ("SIGMAS", {"tooltip": "Stage-1 sigmas, e.g. LTXVScheduler with 40 steps (LTX-2.3: 30)."}),
                "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
                "mode": (["one_stage", "two_stage"], {"default": "one_stage"}),
                "parallel_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
                                  "Ranks for stage 1 (up to one per branch is useful: 4 with the full LTX-2 policy)."}),
                "devices": ("STRING", {"default": "", "tooltip": "Empty = first GPUs (CPU ranks without GPUs), "
                                                                 "or e.g. 'cuda:0,cuda:1'."}),
                "stage2_sigmas": ("STRING", {"default": ", ".join(str(s) for s in DISTILLED_STAGE2_SIGMAS),
                                             "tooltip": "Sigmas of the distilled stage-2 refine."}),
            },
            "optional": {
                "stage2_model": ("MODEL", {"tooltip": "Stage-2 model (e.g. with the distilled LoRA); "
                                                      "defaults to the stage-1 model."}),
                "upscale_model": ("LATENT_UPSCALE_MODEL", {"tooltip": "LTX-2 spatial upscaler (two_stage)."}),
                "vae": ("VAE", {"tooltip": "Video VAE, for the upsampler's normalisation (two_stage)."}),
            },
        }

    def sample(self, model, positive, negative, policy, latent, sampler, sigmas, noise_seed, mode, parallel_size,
               devices, stage2_sigmas, stage2_model=None, upscale_model=None, vae=None):
        if not isinstance(policy, CFGPolicy):
            raise PolicyError("The policy input must come from a CFGPolicy Builder node.")
        plan = StagePlan(two_stage=mode == "two_stage", stage2_sigmas=parse_sigmas(stage2_sigmas))
        settings = ParallelSettings(size=parallel_size, devices=devices)
        settings.group_spec()  # a bad device request fails here, at any size, before stage 1 starts
        final, stage1 = run_ltx2(model, positive, negative, policy, latent, sampler, sigmas, noise_seed, settings,
                                 plan, upscale_model=upscale_model, vae=vae, stage2_model=stage2_model)
        return (final, stage1)
