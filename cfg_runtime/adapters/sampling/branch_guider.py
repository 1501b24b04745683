"""The guided prediction itself: a ComfyUI CFGGuider whose prediction is a policy's combine
of its branches, each branch one ComfyUI model call with its own per-call options.

Shared by the ComfyUI process (size 1, the serial reference) and the ranks (sample_job.py):
the same code runs the same ComfyUI sampler loop in both, only the dispatcher's exchange differs.
"""
from __future__ import annotations

import torch

import comfy.samplers

from ...errors import PolicyError
from ...guidance.policy import CFGBranch, CFGPolicy
from ...parallel.dispatch import BranchDispatcher
from ..families import ModelFamily, family_of
from ..models.core_cfg import branch_call, core_combine, evaluate_with, needs_core_combine
from .guidance_passes import extra_passes, pass_branches, record, replayed_options


def step_index(timestep: torch.Tensor, model_options: dict) -> int:
    """Index of the current sigma in the schedule (what skip_step counts)."""
    sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
    if sigmas is None:
        return 0
    t = float(timestep.reshape(-1)[0])
    return int((sigmas[:-1].float() > t * (1 + 1e-5) + 1e-9).sum())


def branch_options(model_options: dict, branch: CFGBranch, family: ModelFamily) -> dict:
    """The per-call model_options of a branch; a branch that is not a plain conditioning (STG, the
    modality-isolated pass, a stream that skips this step) is made by the model's family."""
    if branch.is_plain:
        return model_options
    if family.branch_options is None:
        raise PolicyError(f"Branch '{branch.name}' needs STG or modality passes, which {family.label} does not have: "
                          f"use a policy of plain conditionings (standard_cfg).")
    return family.branch_options(model_options, branch)


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
        family = family_of(self.model_patcher)
        passes = extra_passes(model_options)  # PAG, SLG, PerpNeg: their model call as a branch
        by_name = {p.name: p for p in passes}

        def evaluate(branch: CFGBranch) -> torch.Tensor:
            if branch.name in by_name:
                return record(by_name[branch.name], self.inner_model, self.conds, self.policy.rule.cfg_scale, x,
                              timestep, model_options)
            options = branch_options(model_options, branch, family)
            batch_fn = branch_call(options, branch)
            if batch_fn is not None:  # SkipLayerGuidanceDiTSimple's cond-batch function, this branch's half
                return evaluate_with(*batch_fn, self.inner_model, self.conds, x, timestep, options)
            # the negative in core's uncond slot: patches that read transformer_options["cond_or_uncond"]
            # (SelfAttentionGuidance records the uncond pass's attention) see what core shows them
            slot = 1 if branch.cond == "negative" else 0
            conds = [None, self.conds[branch.cond]] if slot else [self.conds[branch.cond]]
            return comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, options)[slot]

        post_cfg = model_options.get("sampler_post_cfg_function", [])
        core = needs_core_combine(model_options)
        uncond = _uncond_branch(self.policy)
        extra = pass_branches(passes)
        if (post_cfg or core) and uncond is None and "negative" in self.conds \
                and model_options.get("disable_cfg1_optimization"):
            # core's sampling_function evaluates the negative at cfg 1 when this is set (the *_cfg_pp samplers do)
            uncond = CFGBranch("uncond" if "negative" in self.policy.names else "negative", "negative")
            extra += (uncond,)
        dispatcher.last_preds = {}
        out = dispatcher(evaluate, x, step_index(timestep, model_options), latent_shapes=self.latent_shapes,
                         extra=extra)
        preds = dispatcher.last_preds
        options = replayed_options(model_options, passes, preds)
        if core:  # a CFG or pre-CFG function (RescaleCFG, APG, ...): core's combine on the exchanged predictions
            pair = (preds["cond"], preds[uncond.name] if uncond is not None else torch.zeros_like(out))
            return core_combine(self.inner_model, self.conds, pair, uncond is not None, self.policy.rule.cfg_scale,
                                x, timestep, options)
        if not post_cfg:
            return out
        return self._post_cfg(options["sampler_post_cfg_function"], out, preds, uncond, x, timestep, options)

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
