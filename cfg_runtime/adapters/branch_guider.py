"""The guided prediction itself: a ComfyUI CFGGuider whose prediction is a policy's combine
of its branches, each branch one ComfyUI model call with its own per-call options.

Shared by the ComfyUI process (size 1, the serial reference) and the ranks (sample_job.py):
the same code runs the same ComfyUI sampler loop in both, only the dispatcher's exchange differs.
"""
from __future__ import annotations

import torch

import comfy.samplers

from ..errors import PolicyError
from ..guidance.policy import CFGBranch, CFGPolicy
from ..parallel.dispatch import BranchDispatcher
from .ltx_options import branch_model_options


def step_index(timestep: torch.Tensor, model_options: dict) -> int:
    """Index of the current sigma in the schedule (what skip_step counts)."""
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return 0
    t = float(timestep.reshape(-1)[0])
    return int((sigmas[:-1].float() > t * (1 + 1e-5) + 1e-9).sum())


def branch_options(model_options: dict, branch: CFGBranch) -> dict:
    """The per-call model_options of a branch: STG on the video and audio self-attention
    of their own blocks (one forward), the modality-isolated pass, and the stream of a
    modality that skips this step switched off."""
    if branch.is_plain:
        return model_options
    return branch_model_options(model_options, perturb_blocks=branch.perturb_blocks,
                                perturb_audio_blocks=branch.perturb_audio_blocks,
                                isolate_modalities=branch.isolate_modalities,
                                run_video=branch.run_video, run_audio=branch.run_audio)


def latent_shapes(latent_image) -> tuple[tuple[int, ...], ...] | None:
    """The parts of a nested (audio+video) latent, which the combine guides one by one."""
    if getattr(latent_image, "is_nested", False):
        return tuple(tuple(t.shape) for t in latent_image.unbind())
    return None


def _uncond_branch(policy: CFGPolicy) -> CFGBranch | None:
    """The policy's unaltered pass on the negative conditioning (core's uncond), if any."""
    return next((b for b in policy.branches if b.cond == "negative" and b.is_plain), None)


class BranchGuider(comfy.samplers.CFGGuider):
    """CFGGuider whose prediction is the policy's combine of its branches, through a dispatcher."""

    def __init__(self, model_patcher, policy: CFGPolicy) -> None:
        super().__init__(model_patcher)
        self.policy = policy
        self.dispatcher: BranchDispatcher | None = None
        self.latent_shapes: tuple[tuple[int, ...], ...] | None = None

    def set_conds(self, positive, negative=None) -> None:
        conds = {"positive": positive}
        if negative is not None:
            conds["negative"] = negative
        missing = sorted({b.cond for b in self.policy.branches} - set(conds))
        if missing:
            raise PolicyError(f"The policy has branch(es) on the {missing[0]} conditioning, but none is connected: "
                              f"connect a {missing[0]} input, or use a policy without that branch (e.g. CFG 1).")
        self.inner_set_conds(conds)

    def runs_extra_uncond(self, sampler) -> bool:
        """Whether sampling with `sampler` adds the negative pass (see predict_noise): the *_cfg_pp samplers set
        disable_cfg1_optimization with a post-CFG function inside their loop; a model option may set it too."""
        name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
        asked = "cfg_pp" in name or bool(self.model_patcher.model_options.get("disable_cfg1_optimization"))
        return asked and "negative" in self.original_conds and _uncond_branch(self.policy) is None

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        dispatcher = self.dispatcher or BranchDispatcher(self.policy)
        self.dispatcher = dispatcher

        def evaluate(branch: CFGBranch) -> torch.Tensor:
            options = branch_options(model_options, branch)
            return comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[branch.cond]], x, timestep,
                                                  options)[0]

        post_cfg = model_options.get("sampler_post_cfg_function", [])
        uncond = _uncond_branch(self.policy)
        extra = ()
        if post_cfg and uncond is None and "negative" in self.conds and model_options.get("disable_cfg1_optimization"):
            # core's sampling_function evaluates the negative at cfg 1 when this is set (the *_cfg_pp samplers do)
            uncond = CFGBranch("uncond" if "negative" in self.policy.names else "negative", "negative")
            extra = (uncond,)
        dispatcher.last_preds = {}
        out = dispatcher(evaluate, x, step_index(timestep, model_options), latent_shapes=self.latent_shapes,
                         extra=extra)
        if not post_cfg:
            return out
        return self._post_cfg(post_cfg, out, dispatcher.last_preds, uncond, x, timestep, model_options)

    def _post_cfg(self, functions, out, preds: dict, uncond: CFGBranch | None, x, timestep, model_options):
        """What core's cfg_function hands post-CFG functions: the branch predictions (a missing
        uncond is zeros, as core's calc_cond_batch gives for no conditioning); on a step where no
        forward ran (LTX skip_step) only the reused result exists."""
        cond_pred = preds.get("cond", out)
        uncond_pred = preds[uncond.name] if uncond is not None and uncond.name in preds else (
            torch.zeros_like(out) if preds else out)
        for fn in functions:
            out = fn({"denoised": out, "cond": self.conds.get("positive"), "uncond": self.conds.get("negative"),
                      "cond_scale": self.policy.rule.cfg_scale, "model": self.inner_model,
                      "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                      "sigma": timestep, "model_options": model_options, "input": x})
        return out

    def sample_with(self, dispatcher: BranchDispatcher, noise, latent_image, sampler, sigmas, denoise_mask=None,
                    callback=None, disable_pbar=False, seed=None):
        """ComfyUI's own sample() with this dispatcher (a LocalExchange in the ComfyUI process, the
        group's exchange on a rank)."""
        self.latent_shapes = latent_shapes(latent_image)
        self.dispatcher = dispatcher
        return comfy.samplers.CFGGuider.sample(self, noise, latent_image, sampler, sigmas, denoise_mask, callback,
                                               disable_pbar, seed)
