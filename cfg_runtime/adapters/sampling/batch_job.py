"""The batch split on the ComfyUI side: which jobs can split their latent batch, and what one
batch group samples (its rows of the noise, latent, mask and per-sample conditioning, and
its rows of the noise that ancestral and SDE samplers draw at every step).

ComfyUI draws the initial noise for the whole batch (the job carries it: each group takes
its rows). The per-step noise comes from ``comfy.k_diffusion.sampling``'s
``default_noise_sampler`` / ``BrownianTreeNoiseSampler``, seeded for the shape of the
sampler's latent: while a group samples (on its rank process, one job at a time) both names
are wrapped so that they draw for the whole batch and hand back the group's rows, the very
numbers the unsplit batch gets. A nested (LTX-2 audio+video) latent splits part by part (the
video's rows, the audio's, their noise's and masks'); ComfyUI packs each group's parts for
its sampler, and rank 0 gets every part whole again. The pure rules (plan, rows, exchange) are in
``parallel/batch.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch

import comfy.k_diffusion.sampling as kds

from ...errors import GroupConfigError
from ...parallel.batch import BatchExchange, BatchPlan, batch_rows, gather_batch, plan_batch_groups
from ...parallel.layout import group_step_time
from ..families import family_of
from .wrapper_keys import MASK_KEY, OUTER

log = logging.getLogger("cfg_parallel")

# conditioning entries ComfyUI repeats to the latent batch (comfy.utils.repeat_to_batch_size)
REPEATED = ("cross_attn", "pooled_output")
_ADAPTIVE = ("dpm_adaptive_function", "dpm_adaptive")  # picks its steps from the whole batch's error
# core guidance nodes whose functions mix a batch's samples: a scale per batch row (SVD's frames), one mean
MIXING = {"VideoLinearCFGGuidance": "a CFG scale per batch row",
          "VideoTriangleCFGGuidance": "a CFG scale per batch row", "Mahiro": "one similarity over the whole batch"}
_FUNCTIONS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function")


def _parts(value) -> list | None:
    """The tensors of a nested (audio+video) value, or None for a plain one."""
    return list(value.unbind()) if getattr(value, "is_nested", False) else None


def batch_size(latent_image) -> int | None:
    """The latent's batch (a nested audio+video latent: its parts', when they agree), or None
    where the batch split does not apply."""
    parts = _parts(latent_image)
    if parts is not None:
        sizes = {int(t.shape[0]) for t in parts}
        return sizes.pop() if len(sizes) == 1 else None
    return int(latent_image.shape[0]) if isinstance(latent_image, torch.Tensor) else None


def nested_rows(value, total: int, lo: int, hi: int, cut=batch_rows):
    """``cut`` applied to each part of a nested value (the same class again), or to the value."""
    parts = _parts(value)
    if parts is None:
        return cut(value, total, lo, hi)
    return type(value)([cut(t, total, lo, hi) for t in parts])


def _cond_problem(conds: dict, total: int) -> str | None:
    for name, items in conds.items():
        for item in items or ():
            if item.get("model_conds"):
                return f"the {name} conditioning carries model conditions ({', '.join(item['model_conds'])})"
            for key, value in item.items():
                if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] in (1, total):
                    continue
                if key not in REPEATED:
                    return f"the {name} conditioning's {key} has {value.shape[0]} rows for a batch of {total}"
    return None


def _sampler_name(sampler) -> str:
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", "") or getattr(sampler, "name", "")


def _model_problem(model) -> str | None:
    """A guidance node on the model whose function mixes the samples of a batch (core's, by its closure's name)."""
    options = getattr(model, "model_options", None) or {}
    for key in _FUNCTIONS:
        found = options.get(key)
        for fn in found if isinstance(found, (list, tuple)) else [found]:
            node = getattr(fn, "__qualname__", "").split(".")[0]
            if fn is not None and node in MIXING and getattr(fn, "__module__", "").startswith("comfy_extras."):
                return f"the model's {node} node takes {MIXING[node]}"
    return None


def _job_problem(total: int | None, *, conds: dict, sampler, policy, model) -> str | None:
    if total is None:
        return "the latent's parts (audio+video) have different batch sizes"
    if total < 2:
        return "the latent batch is 1"
    if _sampler_name(sampler) in _ADAPTIVE:
        return "dpm_adaptive chooses its steps from the whole batch"
    if policy.batch_statistic:
        return f"the policy's {policy.batch_statistic} mixes the samples"
    return _model_problem(model) or _cond_problem(conds, total)


def group_time(policy, model, sequence_degree: int):
    """One sample's predicted step time on a batch group of n ranks (parallel/batch.py's sequence
    axis): the layout that :func:`.sequence_job.job_layout` gives such a group, with the family's
    split share; None where the requested sequence degree does not fit n ranks."""
    family = family_of(model) if model is not None and sequence_degree != 1 else None
    can_split = family is not None and family.can_split
    share = family.split_share if can_split else 0.0
    return lambda ranks: group_step_time(len(policy.branches), ranks, sequence_degree,
                                         can_split=can_split, split_share=share)


def job_batch_groups(requested: int, *, latent_image, conds: dict, sampler, policy, model, world_size: int,
                     sequence_degree: int) -> int:
    """The batch groups of a job (1 = no split). A forced split that cannot run is refused with
    the reason; ``auto`` falls back to no split (logged). With the sequence split the planner
    weighs the three axes (batch groups x branch groups x sequence degree)."""
    if requested == 1 or world_size == 1:
        return 1
    total = batch_size(latent_image)
    problem = _job_problem(total, conds=conds, sampler=sampler, policy=policy, model=model)
    if problem is None and requested and sequence_degree > 1 and (world_size // requested) % sequence_degree:
        problem = (f"a sequence degree of {sequence_degree} does not divide the {world_size // requested} rank(s) "
                   f"of a batch group")
    if problem is not None:
        if requested:
            raise GroupConfigError(f"The batch split ({requested} groups) cannot run: {problem}. Set the batch "
                                   f"split to off or auto.")
        if total is not None and total > 1:
            log.info("cfg-parallel: no batch split: %s", problem)
        return 1
    return plan_batch_groups(total, len(policy.branches), world_size, requested,
                             group_time(policy, model, sequence_degree))


def sliced_conds(conds: dict, total: int, lo: int, hi: int) -> dict:
    """Each conditioning with its per-sample tensors cut to rows lo:hi (one row broadcasts, kept)."""
    out = {}
    for name, items in conds.items():
        out[name] = None if items is None else [
            {k: batch_rows(v, total, lo, hi) if isinstance(v, torch.Tensor) and v.ndim > 0 else v
             for k, v in item.items()} for item in items]
    return out


def _rows(value, total: int, lo: int, hi: int):
    return batch_rows(value, total, lo, hi) if isinstance(value, torch.Tensor) and value.ndim >= 3 else value


def sliced_mask_options(model_options: dict, total: int, lo: int, hi: int) -> dict:
    """The model options with the CFG Parallel node's prepared mask (model_wrapper.UseMask) cut to rows lo:hi."""
    wrappers = model_options.get("transformer_options", {}).get("wrappers", {})
    found = wrappers.get(OUTER, {}).get(MASK_KEY)
    if not found:
        return model_options
    cut = [dataclasses.replace(w, mask=_rows(w.mask, total, lo, hi)) for w in found]
    outer = {**wrappers[OUTER], MASK_KEY: cut}
    to = {**model_options["transformer_options"], "wrappers": {**wrappers, OUTER: outer}}
    return {**model_options, "transformer_options": to}


@contextlib.contextmanager
def whole_batch_noise(total: int, lo: int, hi: int) -> Iterator[None]:
    """While sampling rows lo:hi: the samplers' per-step noise drawn for the whole batch, these rows kept."""
    default, brownian = kds.default_noise_sampler, kds.BrownianTreeNoiseSampler

    def full(x):
        return x.new_zeros((total,) + tuple(x.shape[1:])) if x.shape[0] == hi - lo else x

    def split_default(x, *args, **kwargs):
        draw = default(full(x), *args, **kwargs)
        return lambda sigma, sigma_next: draw(sigma, sigma_next)[lo:hi]

    class SplitBrownian:
        def __init__(self, x, *args, **kwargs) -> None:
            self.inner = brownian(full(x), *args, **kwargs)

        def __call__(self, sigma, sigma_next):
            return self.inner(sigma, sigma_next)[lo:hi]

    kds.default_noise_sampler, kds.BrownianTreeNoiseSampler = split_default, SplitBrownian
    try:
        yield
    finally:
        kds.default_noise_sampler, kds.BrownianTreeNoiseSampler = default, brownian


@dataclass(frozen=True)
class BatchSetup:
    """What one rank samples: its group's inputs and context; ``plan`` None = no split."""

    ctx: Any
    noise: Any
    latent_image: Any
    denoise_mask: Any
    conds: dict
    plan: BatchPlan | None = None

    def apply(self, guider) -> None:
        guider.original_conds = dict(self.conds)
        if self.plan is not None:
            lo, hi = self.plan.bounds(self.plan.group_of(self.ctx_world_rank))
            guider.model_options = sliced_mask_options(guider.model_options, self.plan.total, lo, hi)

    @property
    def ctx_world_rank(self) -> int:
        return self._world.rank

    @property
    def _world(self):
        ex = self.ctx.exchange
        return ex.world if isinstance(ex, BatchExchange) else ex

    def noise_samplers(self):
        if self.plan is None:
            return contextlib.nullcontext()
        lo, hi = self.plan.bounds(self.plan.group_of(self.ctx_world_rank))
        return whole_batch_noise(self.plan.total, lo, hi)

    def gather(self, out):
        """The whole batch from every group (each part of a nested latent in turn)."""
        if self.plan is None:
            return out
        parts = _parts(out)
        if parts is None:
            return gather_batch(self._world, self.plan, out)
        return type(out)([gather_batch(self._world, self.plan, t) for t in parts])

    def summary(self) -> dict:
        if self.plan is None:
            return {}
        return {"batch": [self.plan.groups, *self.plan.bounds(self.plan.group_of(self.ctx_world_rank))]}


def batch_setup(ctx, job) -> BatchSetup:
    """This rank's share of the job (``job.batch_groups`` 1: the whole job, the rank's own context)."""
    if job.batch_groups == 1:
        return BatchSetup(ctx, job.noise, job.latent_image, job.denoise_mask, job.conds)
    total = batch_size(job.latent_image)
    plan = BatchPlan(total, job.batch_groups, ctx.world_size)
    exchange = BatchExchange(ctx.exchange, plan)
    lo, hi = plan.bounds(exchange.group)
    view = dataclasses.replace(ctx, rank=exchange.rank, world_size=exchange.world_size, exchange=exchange)
    return BatchSetup(view, nested_rows(job.noise, total, lo, hi), nested_rows(job.latent_image, total, lo, hi),
                      nested_rows(job.denoise_mask, total, lo, hi, _rows), sliced_conds(job.conds, total, lo, hi),
                      plan)
