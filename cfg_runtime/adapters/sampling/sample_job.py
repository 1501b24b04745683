"""Rank side of a parallel sample(): rebuild the model, run ComfyUI's own sampler loop with a
dispatcher bound to the group, report what the rank did and which model it now holds."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

import comfy.samplers

from ...group.shipping import shippable
from ...errors import ShippingError
from ...guidance.policy import CFGPolicy
from ...parallel.dispatch import BranchDispatcher
from .batch_job import batch_setup
from .branch_guider import BranchGuider
from ..models.model_cache import ModelCache
from .sequence_job import sequence_setup
from ..models.transport import ModelShipment


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
    """The sampler itself, or what rebuilds it on a rank; ShippingError when neither can travel."""
    if shippable(sampler):
        return sampler
    fn = getattr(sampler, "sampler_function", None)
    name = _LOCAL_SAMPLERS.get(getattr(fn, "__name__", ""))
    if name is not None:
        return SamplerByName(name, dict(sampler.extra_options), dict(sampler.inpaint_options))
    raise ShippingError(f"The sampler {getattr(fn, '__name__', type(sampler).__name__)} cannot be sent to the worker "
                        f"processes; pick another sampler or run at parallel size 1.")


@dataclass(frozen=True)
class MissingModel:
    """The job's value when some rank lacks the base model the job left out: the parent sends it."""

    base_token: str


def to_cpu(value):
    if getattr(value, "is_nested", False):
        return type(value)([t.cpu() for t in value.unbind()])
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _all_hold(ctx, holds: bool) -> bool:
    """Whether every rank holds the model: one flag exchange, so the ranks decide together."""
    gathered = ctx.exchange.gather([], 0, torch.zeros(1, device=ctx.device), failed=not holds)
    return not gathered.failed_ranks


def _size_text(shipment: ModelShipment) -> str:
    if shipment.base_model is not None:
        size = sum(t.numel() * t.element_size() for t in shipment.base_model.state_dict().values())
        return f"{size / 2**30:.2f} GB from shared memory"
    files = [a for a in shipment.recipe[1] if isinstance(a, str) and os.path.isfile(a)]
    return f"{sum(os.path.getsize(f) for f in files) / 2**30:.2f} GB from {os.path.basename(files[0])}" if files \
        else "from its loader"


def _load(ctx, cache: ModelCache, shipment: ModelShipment):
    """The rank's patcher for the shipment, telling the parent (ctx.phase) while a model loads."""
    carried = shipment.base_model is not None or shipment.recipe is not None
    if carried:
        ctx.phase(f"loading the model ({_size_text(shipment)})")
    t0 = time.monotonic()
    patcher, reloaded = cache.patcher_for(shipment, ctx.device)
    if carried or reloaded:
        pins = cache.pinned if cache.base_loaded else None
        locked = f" ({pins.nbytes / 2**30:.1f} GiB page-locked for the GPU in {pins.seconds:.1f} s)" \
            if pins is not None and pins.nbytes else ""
        ctx.phase(f"model ready in {time.monotonic() - t0:.1f} s{locked}")
    return patcher, reloaded


@dataclass(frozen=True)
class ComfySampleJob:
    """One sample() of a guider, executed identically on every rank."""

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
    sequence_degree: int = 1  # see ParallelSettings.sequence_degree
    released: tuple[str, ...] = ()  # models ComfyUI no longer holds: the ranks drop them
    batch_groups: int = 1  # the latent batch split over this many groups (sampling/batch_job.py)

    def run(self, ctx) -> Any:
        cache = ModelCache(ctx.cache)
        cache.release(self.released)
        carries_base = self.shipment.base_model is not None or self.shipment.recipe is not None
        if not carries_base and not _all_hold(ctx, cache.holds(self.shipment.base_token)):
            ctx.summary.update(resident_model=None, **cache.report())
            return MissingModel(self.shipment.base_token) if ctx.rank == 0 else None
        patcher, reloaded = _load(ctx, cache, self.shipment)
        sampler = self.sampler.build() if isinstance(self.sampler, SamplerByName) else self.sampler
        guider = BranchGuider(patcher, self.policy)
        batch = batch_setup(ctx, self)  # this rank's batch group: its rows, its exchange
        batch.apply(guider)
        split = sequence_setup(batch.ctx, patcher, self.policy, self.sequence_degree,
                               world=(ctx.rank, ctx.world_size))
        split.apply(guider)
        dispatcher = BranchDispatcher(self.policy, split.exchange, strategy=self.strategy,
                                      stop_requested=ctx.stop_requested)

        def callback(step, x0, x, total_steps):
            ctx.emit({"step": step, "total": total_steps, "x0": to_cpu(x0)})

        try:
            with batch.noise_samplers():
                out = guider.sample_with(dispatcher, batch.noise, batch.latent_image, sampler, self.sigmas,
                                         batch.denoise_mask, callback if ctx.rank == 0 else None, True, self.seed)
            out = batch.gather(out)
        finally:
            self._report(ctx, cache, dispatcher, reloaded)
            ctx.summary.update(split.summary(), **batch.summary())
        return to_cpu(out) if ctx.rank == 0 else None

    def _report(self, ctx, cache: ModelCache, dispatcher: BranchDispatcher, reloaded: bool) -> None:
        cache.settle_pins()  # the weights are on the GPU now: unlock their host pages
        ctx.summary.update(dispatcher.stats.as_dict())
        ctx.summary["model_reloaded"] = reloaded
        ctx.summary["base_loaded"] = cache.base_loaded
        if ctx.device.type == "cuda":
            ctx.summary["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
        if not self.keep_model_loaded:
            cache.drop()
        ctx.summary["resident_model"] = self.shipment.base_token if cache.holds(self.shipment.base_token) else None
        ctx.summary.update(cache.report())
