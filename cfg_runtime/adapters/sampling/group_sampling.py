"""Parent side of a parallel sample(): check and capture the job, find the group, send the
base model only to ranks that lack it, relay progress, and keep track of what the ranks hold.

Residency (which base model the ranks hold) is owned here, from what the ranks report in
their summaries; the group itself knows nothing of models.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable

import comfy.model_management

from ...errors import JobInterrupted, ShippingError
from ...group import JobResult, WorkerGroup, current_group, get_group, prestart
from ...group.shipping import check_shippable
from ...guidance.policy import CFGPolicy
from ..models.model_cache import BUDGET_ENV, short
from .progress_text import ProgressText
from .batch_job import batch_size, job_batch_groups
from .sample_job import ComfySampleJob, MissingModel, shippable_sampler
from .sequence_job import job_layout, log_layout
from ..models.transport import (RELEASED, WeightRoute, build_copy_in_background, capture, route_weights,
                                with_base)

log = logging.getLogger("cfg_parallel")

_resident: "weakref.WeakKeyDictionary[WorkerGroup, tuple[str, ...]]" = weakref.WeakKeyDictionary()


def resident_models(group: WorkerGroup | None) -> tuple[str, ...]:
    """The base model tokens every rank of `group` holds now, least recently used first (as they told us)."""
    return _resident.get(group, ()) if group is not None else ()


def resident_model(group: WorkerGroup | None) -> str | None:
    """The most recently used base model every rank of `group` holds (None: none, or not known)."""
    held = resident_models(group)
    return held[-1] if held else None


@dataclass(frozen=True)
class SampleCall:
    """One guider sample() as the ranks will run it."""

    model_patcher: Any
    policy: CFGPolicy
    conds: dict
    noise: Any
    latent_image: Any
    sampler: Any
    sigmas: Any
    denoise_mask: Any
    seed: Any
    callback: Callable | None = None


def _check_picklable(job: ComfySampleJob) -> None:
    for name in ("conds", "sampler"):
        try:
            check_shippable(getattr(job, name))
        except Exception as exc:
            what = "conditioning (it carries an object such as a ControlNet or a hook that cannot be sent to the " \
                   "worker processes)" if name == "conds" else "sampler"
            raise ShippingError(f"The {what} cannot be sent to the workers ({type(exc).__name__}: {exc}). "
                                f"Run at parallel size 1, or remove what adds it.") from None


def _job(call: SampleCall, settings, route: WeightRoute, batch_groups: int) -> ComfySampleJob:
    job = ComfySampleJob(
        shipment=capture(call.model_patcher, route, settings.node), policy=call.policy, conds=call.conds,
        noise=call.noise,
        latent_image=call.latent_image, sampler=shippable_sampler(call.sampler), sigmas=call.sigmas,
        denoise_mask=call.denoise_mask, seed=call.seed, strategy=settings.strategy,
        keep_model_loaded=settings.keep_model_loaded, sequence_degree=settings.sequence_degree,
        released=tuple(sorted(RELEASED)), batch_groups=batch_groups)
    _check_picklable(job)
    return job


def _batch_groups(call: SampleCall, settings) -> int:
    return job_batch_groups(settings.batch_split, latent_image=call.latent_image, conds=call.conds,
                            sampler=call.sampler, policy=call.policy, model=call.model_patcher,
                            world_size=settings.world_size, sequence_degree=settings.sequence_degree)


def _plan(call: SampleCall, settings, world_size: int) -> tuple[int, str]:
    """The job's batch groups and its layout in each (logged); the idle-ranks note ("" if none)."""
    groups = _batch_groups(call, settings)
    per_group = world_size // groups
    layout = job_layout(call.policy, per_group, settings.sequence_degree, call.model_patcher)
    if groups > 1:
        log.info("cfg-parallel batch split: %d batch group(s) x %s for a batch of %d (%d ranks)", groups,
                 layout.describe(), batch_size(call.latent_image), world_size)
    return groups, log_layout(call.policy, layout, settings.sequence_degree, call.model_patcher)


def _record_residency(group: WorkerGroup, result: JobResult) -> None:
    """What every rank holds now (the ranks evict alike: the same jobs, the same budget), and their evictions."""
    first, *others = [tuple(s.get("resident_models", ())) for s in result.summaries] or [()]
    _resident[group] = tuple(t for t in first if all(t in o for o in others))
    RELEASED.intersection_update(t for s in result.summaries for t in s.get("resident_models", ()))  # done
    evicted = sorted({t for s in result.summaries for t in s.get("evicted_models", ())})
    if evicted:
        log.info("cfg-parallel: the ranks evicted %d model(s) to stay within their model budget (%s): %s",
                 len(evicted), BUDGET_ENV, ", ".join(short(t) for t in evicted))


def _carries_base(job: ComfySampleJob) -> bool:
    return job.shipment.base_model is not None or job.shipment.recipe is not None


def start_early(settings, branches: int, model_patcher=None) -> None:
    """Spawn the worker group of `settings` (a ParallelSettings) now, without waiting: called when a
    node that will sample on it executes, so the ranks start while ComfyUI runs the nodes before the
    sampler (text encoders, loaders). A group that runs already for these devices is kept. With the
    node's model, the ranks' copy of its weights (a recipe copy under dynamic VRAM) starts building
    too, unless the ranks hold it already.
    Only where the node knows that more than one rank gets work (`branches` > 1, known from a
    connected policy; 0 = not known yet, e.g. KSampler's cfg; or a sequence or batch split): a
    sampling that gives work to one rank runs in ComfyUI without a group."""
    if not gives_several_ranks_work(settings, branches):
        return
    spec = settings.group_spec()
    prestart(spec)
    if model_patcher is not None:
        try:
            route = route_weights(model_patcher, spec.devices)
        except ShippingError:
            return  # sampling refuses it, with the reason
        if route.token not in resident_models(current_group()):
            build_copy_in_background(model_patcher, route)


def gives_several_ranks_work(settings, branches: int) -> bool:
    """Whether sampling with `settings` and a policy of `branches` (0 = not known) needs the group."""
    split = settings.sequence_degree != 1 or settings.batch_split != 1
    return settings.world_size >= 2 and (branches > 1 or split)


def start_when_queued(settings) -> bool:
    """Spawn the group of `settings` (a ParallelSettings) for a prompt just queued, before ComfyUI runs
    its first node, so the ranks start beside the loaders and text encoders; never in place of a
    running group (the node that needs another one replaces it when it runs). True when spawned."""
    return prestart(settings.group_spec(), replace=False)


def sample_on_group(call: SampleCall, settings) -> tuple[Any, JobResult]:
    """Run one sample() on the worker group of `settings` (a ParallelSettings); returns rank 0's
    latent and the job's result. An interrupt raises ComfyUI's InterruptProcessingException."""
    spec = settings.group_spec()
    route = route_weights(call.model_patcher, spec.devices)  # refuses what cannot travel before any rank starts
    groups, idle = _plan(call, settings, spec.world_size)
    job = _job(call, settings, route, groups)
    interrupted = comfy.model_management.processing_interrupted
    text = ProgressText(spec.world_size)
    prestart(spec, on_phase=text)  # the ranks start (if they do not run) while the weights get ready
    if route.token not in resident_models(current_group()):
        job = replace(job, shipment=with_base(job.shipment, call.model_patcher, route))
    try:  # an interrupt while the group starts (or finishes an interrupted job) keeps it for later
        group = get_group(spec, interrupt_requested=interrupted, on_phase=text)
    except JobInterrupted:
        raise comfy.model_management.InterruptProcessingException()

    def on_progress(payload: dict) -> None:
        if "step" in payload:
            text.show(f"cfg-parallel: sampling on {spec.world_size} ranks" + (f"\n{idle}" if idle else ""))
        if call.callback is not None and "step" in payload:
            call.callback(payload["step"], payload["x0"], payload["x0"], payload["total"])

    if not _carries_base(job) and route.token not in resident_models(group):  # the ranks lack it (as they told us)
        job = replace(job, shipment=with_base(job.shipment, call.model_patcher, route))
    try:
        result = group.run(job, on_progress=on_progress, interrupt_requested=interrupted, on_phase=text)
        if isinstance(result.value, MissingModel):  # a rank lost it (restarted, dropped): send it once
            job = replace(job, shipment=with_base(job.shipment, call.model_patcher, route))
            result = group.run(job, on_progress=on_progress, interrupt_requested=interrupted, on_phase=text)
    except JobInterrupted:
        # the ranks finish loading this model in the background (or already hold it); a wrong
        # guess costs one MissingModel round trip on the next prompt
        if settings.keep_model_loaded:
            _resident[group] = tuple(t for t in resident_models(group) if t != route.token) + (route.token,)
        raise comfy.model_management.InterruptProcessingException()
    _record_residency(group, result)
    text.show(f"cfg-parallel: sampled on {spec.world_size} ranks in {result.seconds:.1f} s")
    return result.value, result
