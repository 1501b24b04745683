"""The Multi-Branch Guider: a ComfyUI GUIDER that evaluates a policy's branches.

At parallel size 1 it samples in the ComfyUI process, branch after branch (the serial
reference). At size >= 2 it hands the whole sample() to the worker group: every rank
runs ComfyUI's own sampler loop with the same inputs, evaluates only its branches,
exchanges predictions, and combines them with the policy; rank 0 returns the latent.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.samplers

from .transport import (RANK_DYNAMIC_VRAM_ENV, ModelCache, ModelNotCached, ModelShipment, capture,
                          check_model_options, parent_runs_dynamic_vram, plan_base)
from ..parallel.dispatch import BranchDispatcher
from ..errors import GroupConfigError, JobFailedError, JobInterrupted, PolicyError, ShippingError
from ..group import BACKEND_ENV, GroupSpec, get_group, parse_devices
from .ltx_options import branch_model_options, check_blocks, model_family
from ..guidance.policy import CFGBranch, CFGPolicy
from ..group.shipping import check_shippable, shippable

log = logging.getLogger("cfg_parallel")

WORKER_INIT = "cfg_runtime.adapters.transport:init_worker"


@dataclass(frozen=True)
class ParallelSettings:
    """How the guider runs: on how many ranks, which devices, how patiently."""

    size: int = 1
    devices: str = ""
    strategy: str = "cost_balanced"
    keep_model_loaded: bool = True
    step_timeout_s: float = 600.0
    start_timeout_s: float = 180.0
    # "" = NCCL for GPUs, gloo for CPUs. gloo on GPUs is the way to put two ranks on one GPU
    # (NCCL refuses a GPU listed twice); the environment variable CFG_PARALLEL_BACKEND sets it.
    backend: str = field(default_factory=lambda: os.environ.get(BACKEND_ENV, "").strip().lower())

    def group_spec(self) -> GroupSpec:
        if self.backend not in ("", "nccl", "gloo"):
            raise GroupConfigError(f"Unknown backend {self.backend!r} (from {BACKEND_ENV}?): use 'nccl', 'gloo' or "
                                   f"leave it empty.")
        if not (isinstance(self.step_timeout_s, (int, float)) and math.isfinite(self.step_timeout_s)
                and self.step_timeout_s > 0):
            raise GroupConfigError(f"step_timeout_s must be a positive number of seconds, got {self.step_timeout_s}.")
        backend = self.backend or os.environ.get(BACKEND_ENV, "").strip().lower()
        devices = parse_devices(self.devices, self.size, backend)
        # CPU kernels can round differently with another thread count: CPU ranks use this
        # process's count, so their results equal the in-process (size 1) ones bit for bit.
        return GroupSpec(devices=devices, backend=backend, step_timeout_s=self.step_timeout_s, start_timeout_s=self.start_timeout_s,
                         collective_timeout_s=max(self.step_timeout_s, 60.0), worker_init=WORKER_INIT,
                         threads_per_rank=torch.get_num_threads())


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


def check_policy_fits_model(policy: CFGPolicy, model) -> None:
    """Refuse a policy whose branches this model cannot run, before any sampling starts."""
    family = model_family(model)
    if policy.rule.kind == "ltx_multimodal" and family == "other":  # the only rule with STG/modality branches
        raise PolicyError(f"The ltx2_multimodal policy needs an LTX model; this model is {type(model.model).__name__}. "
                          f"Use the standard_cfg preset.")
    lists = [("video_stg_blocks", "perturb_blocks")]
    if family == "ltxav":  # an LTX-Video model has no audio stream: its audio blocks perturb nothing
        lists.append(("audio_stg_blocks", "perturb_audio_blocks"))
    for branch in policy.branches:
        for label, field in lists:
            blocks = getattr(branch, field)
            if blocks:
                try:
                    check_blocks(model, blocks)
                except ValueError as exc:
                    raise PolicyError(f"Branch '{branch.name}' ({label}): {exc}") from None
        if branch.isolate_modalities and family != "ltxav":
            raise PolicyError(f"Branch '{branch.name}' is the modality-isolated pass, which needs an LTX-2 audio+video "
                              f"model; this model is {family!r}. Set the modality scales to 1 for this model.")


def _uncond_branch(policy: CFGPolicy) -> CFGBranch | None:
    """The policy's unaltered pass on the negative conditioning (core's uncond), if any."""
    return next((b for b in policy.branches if b.conds == "negative" and b.is_plain), None)


class MultiBranchGuider(comfy.samplers.CFGGuider):
    """CFGGuider whose prediction is the policy's combine of its branches."""

    def __init__(self, model_patcher, policy: CFGPolicy, parallel: ParallelSettings | None = None) -> None:
        super().__init__(model_patcher)
        self.policy = policy
        self.parallel = parallel or ParallelSettings()
        self.dispatcher: BranchDispatcher | None = None
        self.latent_shapes: tuple[tuple[int, ...], ...] | None = None
        self.last_run: dict = {}

    def set_conds(self, positive, negative=None) -> None:
        conds = {"positive": positive}
        if negative is not None:
            conds["negative"] = negative
        missing = sorted({b.conds for b in self.policy.branches} - set(conds))
        if missing:
            raise PolicyError(f"The policy has branch(es) on the {missing[0]} conditioning, but none is connected: "
                              f"connect a {missing[0]} input, or use a policy without that branch (e.g. CFG 1).")
        self.inner_set_conds(conds)

    # --- one guided model evaluation ----------------------------------------
    def predict_noise(self, x, timestep, model_options={}, seed=None):
        dispatcher = self.dispatcher or BranchDispatcher(self.policy)
        self.dispatcher = dispatcher

        def evaluate(branch: CFGBranch) -> torch.Tensor:
            options = branch_options(model_options, branch)
            return comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[branch.conds]], x, timestep,
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
        preds = dispatcher.last_preds
        # What core's cfg_function hands these functions: the branch predictions (a missing
        # uncond is zeros, as core's calc_cond_batch gives for no conditioning); on a step
        # where no forward ran (LTX skip_step) only the reused result exists.
        cond_pred = preds.get("cond", out)
        uncond_pred = preds[uncond.name] if uncond is not None and uncond.name in preds else (
            torch.zeros_like(out) if preds else out)
        for fn in post_cfg:
            out = fn({"denoised": out, "cond": self.conds.get("positive"), "uncond": self.conds.get("negative"),
                      "cond_scale": getattr(self.policy.rule, "scale", 1.0), "model": self.inner_model,
                      "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                      "sigma": timestep, "model_options": model_options, "input": x})
        return out

    # --- sampling ------------------------------------------------------------
    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        check_model_options(self.model_patcher.model_options)
        self.latent_shapes = _latent_shapes(latent_image)
        if self.parallel.size <= 1:
            self.dispatcher = BranchDispatcher(self.policy, strategy=self.parallel.strategy)
            try:
                return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
            finally:
                self.last_run = {"ranks": 1, **self.dispatcher.stats.as_dict()}
                self.dispatcher = None
        return self._sample_on_group(noise, latent_image, sampler, sigmas, denoise_mask, callback, seed)

    def sample_on_rank(self, noise, latent_image, sampler, sigmas, denoise_mask, callback, seed,
                       dispatcher: BranchDispatcher):
        """Worker side: ComfyUI's own sample() with a dispatcher bound to the group."""
        self.latent_shapes = _latent_shapes(latent_image)
        self.dispatcher = dispatcher
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, True, seed)

    def _sample_on_group(self, noise, latent_image, sampler, sigmas, denoise_mask, callback, seed):
        spec = self.parallel.group_spec()
        plan = plan_base(self.model_patcher, spec.devices)  # refuses what cannot travel before any rank starts
        if parent_runs_dynamic_vram():  # GPU ranks run ComfyUI's dynamic VRAM too (read when they start)
            os.environ[RANK_DYNAMIC_VRAM_ENV] = "1"
        job = ComfySampleJob(
            shipment=capture(self.model_patcher, with_base=False, plan=plan),
            policy=self.policy,
            conds=self.original_conds,
            noise=noise, latent_image=latent_image, sampler=shippable_sampler(sampler), sigmas=sigmas,
            denoise_mask=denoise_mask, seed=seed, strategy=self.parallel.strategy,
            keep_model_loaded=self.parallel.keep_model_loaded,
        )
        _check_picklable(job)
        try:  # an interrupt while the group starts (or finishes an interrupted job) keeps it for later
            group = get_group(spec, interrupt_requested=comfy.model_management.processing_interrupted)
        except JobInterrupted:
            raise comfy.model_management.InterruptProcessingException()
        token = job.shipment.base_token
        if group.facts.get("base_token") != token:  # the ranks don't hold this model yet
            job = replace(job, shipment=capture(self.model_patcher, with_base=True, plan=plan))

        def on_progress(payload: dict) -> None:
            if callback is not None and "step" in payload:
                callback(payload["step"], payload["x0"], payload["x0"], payload["total"])

        def run(job: ComfySampleJob):
            return group.run(job, on_progress=on_progress,
                             interrupt_requested=comfy.model_management.processing_interrupted)

        try:
            try:
                result = run(job)
            except JobFailedError as exc:
                if getattr(exc, "remote_type", "") != ModelNotCached.__name__:
                    raise
                job = replace(job, shipment=capture(self.model_patcher, with_base=True, plan=plan))
                result = run(job)
        except JobInterrupted:
            # the ranks finish loading this model in the background (or already hold it)
            group.facts["base_token"] = token if self.parallel.keep_model_loaded else None
            raise comfy.model_management.InterruptProcessingException()
        group.facts["base_token"] = token if self.parallel.keep_model_loaded else None
        self.last_run = {"ranks": spec.world_size, "seconds": result.seconds, "per_rank": result.summaries}
        log.info("cfg-parallel: sampled on %d ranks in %.2f s; %s", spec.world_size, result.seconds,
                 "; ".join(f"rank {i}: {s.get('forwards')}" for i, s in enumerate(result.summaries)))
        return result.value


def _latent_shapes(latent_image) -> tuple[tuple[int, ...], ...] | None:
    if getattr(latent_image, "is_nested", False):
        return tuple(tuple(t.shape) for t in latent_image.unbind())
    return None


def _to_cpu(value):
    if getattr(value, "is_nested", False):
        return type(value)([t.cpu() for t in value.unbind()])
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _check_picklable(job: "ComfySampleJob") -> None:
    for name in ("conds", "sampler"):
        try:
            check_shippable(getattr(job, name))
        except Exception as exc:
            what = "conditioning (it carries an object such as a ControlNet or a hook that cannot be sent to the " \
                   "worker processes)" if name == "conds" else "sampler"
            raise ShippingError(f"The {what} cannot be sent to the workers ({type(exc).__name__}: {exc}). "
                                f"Run at parallel size 1, or remove what adds it.") from None


@dataclass(frozen=True)
class SamplerByName:
    """A ComfyUI sampler rebuilt from its name on each rank (its function is a local closure)."""

    name: str
    extra_options: dict
    inpaint_options: dict

    def build(self):
        return comfy.samplers.ksampler(self.name, self.extra_options, self.inpaint_options)


_LOCAL_SAMPLERS = {"dpm_fast_function": "dpm_fast", "dpm_adaptive_function": "dpm_adaptive"}


def shippable_sampler(sampler):
    if shippable(sampler):
        return sampler
    fn = getattr(sampler, "sampler_function", None)
    name = _LOCAL_SAMPLERS.get(getattr(fn, "__name__", ""))
    if name is not None:
        return SamplerByName(name, dict(sampler.extra_options), dict(sampler.inpaint_options))
    raise ShippingError(f"The sampler {getattr(fn, '__name__', type(sampler).__name__)} cannot be sent to the worker "
                        f"processes; pick another sampler or run at parallel size 1.")


@dataclass(frozen=True)
class ComfySampleJob:
    """One SamplerCustomAdvanced run, executed identically on every rank."""

    shipment: ModelShipment
    policy: CFGPolicy
    conds: dict
    noise: Any
    latent_image: Any
    sampler: Any
    sigmas: torch.Tensor
    denoise_mask: Any
    seed: Any
    strategy: str = "cost_balanced"
    keep_model_loaded: bool = True

    def run(self, ctx) -> Any:
        cache = ModelCache(ctx.cache)
        patcher, reloaded = cache.patcher_for(self.shipment, ctx.device)
        sampler = self.sampler.build() if isinstance(self.sampler, SamplerByName) else self.sampler
        guider = MultiBranchGuider(patcher, self.policy)
        guider.original_conds = dict(self.conds)
        dispatcher = BranchDispatcher(self.policy, ctx.exchange, strategy=self.strategy,
                                      stop_requested=ctx.stop_requested)

        def callback(step, x0, x, total_steps):
            ctx.emit({"step": step, "total": total_steps, "x0": _to_cpu(x0)})

        try:
            out = guider.sample_on_rank(self.noise, self.latent_image, sampler, self.sigmas, self.denoise_mask,
                                        callback if ctx.rank == 0 else None, self.seed, dispatcher)
        finally:
            ctx.summary.update(dispatcher.stats.as_dict())
            ctx.summary["model_reloaded"] = reloaded
            ctx.summary["base_loaded"] = cache.base_loaded
            if ctx.device.type == "cuda":
                ctx.summary["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
            if not self.keep_model_loaded:
                cache.drop()
        return _to_cpu(out) if ctx.rank == 0 else None
