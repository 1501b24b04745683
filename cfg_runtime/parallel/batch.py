"""The batch split: a prompt's latent batch divided over batch groups.

ranks = batch groups x ranks per group (each group: branch groups x sequence degree, the
layout of :mod:`.layout` on ``per_group`` ranks). Group ``g`` holds world ranks ``g *
per_group .. (g + 1) * per_group - 1`` and samples rows ``bounds(g)`` of the batch (split as
evenly as possible, the first groups one row more). A sequence group is ``degree``
consecutive world ranks, so it lies inside one batch group. Inside a group the branch (and
sequence) exchange runs as before; :class:`BatchExchange` runs it over the whole world (rows
padded to the largest share) so that every group sees world rank 0's stop request and any
rank's failure at the same step, and :func:`gather_batch` puts the whole batch together.

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import GroupConfigError, clip
from .exchange import FAILED, STOP, Exchange, Gathered

BATCH_ENV = "CFG_PARALLEL_BATCH_SPLIT"  # "off" / "1" = no split (default), "auto" / "0" = planned, N = N groups


def batch_split_from_env() -> int:
    """The requested batch split: 1 = off (default), 0 = automatic, N = N batch groups."""
    text = os.environ.get(BATCH_ENV, "").strip().lower()
    if text in ("", "off"):
        return 1
    if text == "auto":
        return 0
    if not text.isdigit():
        raise GroupConfigError(f"{BATCH_ENV}={clip(text)}: use 'off', 'auto' or a whole number of batch groups.")
    return int(text)


@dataclass(frozen=True)
class BatchPlan:
    """``total`` rows over ``groups`` batch groups of ``world_size // groups`` ranks each."""

    total: int
    groups: int
    world_size: int

    def __post_init__(self) -> None:
        if self.groups < 1 or self.world_size % self.groups or self.groups > max(self.total, 1):
            raise GroupConfigError(f"{self.groups} batch group(s) do not fit a batch of {self.total} on "
                                   f"{self.world_size} ranks: the groups must divide the ranks and be at most "
                                   f"the batch size.")

    @property
    def per_group(self) -> int:
        return self.world_size // self.groups

    def group_of(self, rank: int) -> int:
        return rank // self.per_group

    def share(self, group: int) -> int:
        return self.total // self.groups + (1 if group < self.total % self.groups else 0)

    @property
    def max_share(self) -> int:
        return self.share(0)

    def bounds(self, group: int) -> tuple[int, int]:
        lo = sum(self.share(g) for g in range(group))
        return lo, lo + self.share(group)

    def describe(self) -> str:
        shares = "+".join(str(self.share(g)) for g in range(self.groups))
        return f"{self.groups} batch group(s) of {self.per_group} rank(s), batch {self.total} as {shares}"


def predicted_time(batch: int, branches: int, world_size: int, groups: int,
                   group_time: Callable[[int], float | None] | None = None) -> float | None:
    """Predicted step time on the busiest rank, in one-sample one-branch units: ``ceil(batch /
    groups)`` samples (batching on one GPU counted as linear: what a compute-bound model does)
    times one sample's step on a group of ``world_size // groups`` ranks, ``group_time(ranks)``
    (its branch x sequence layout; None = no layout fits). Default: branch ranks only."""
    per_group = world_size // groups
    one = group_time(per_group) if group_time is not None else math.ceil(max(branches, 1) / per_group)
    return None if one is None else math.ceil(batch / groups) * one


def plan_batch_groups(batch: int, branches: int, world_size: int, requested: int,
                      group_time: Callable[[int], float | None] | None = None) -> int:
    """Batch groups for a job: ``requested`` 1 = no split, N = N groups (checked), 0 = the fewest
    groups with the least predicted time (:func:`predicted_time`; ties keep the branch and
    sequence layout of one group: no batch split). ``group_time`` is the sequence axis: one
    sample's step time on a group of n ranks (:func:`..layout.relative_step_time` of its layout)."""
    if not isinstance(requested, int) or requested < 0:
        raise GroupConfigError(f"The batch split must be 'off' (1), 'auto' (0) or a number of groups, got "
                               f"{clip(requested)}.")
    if requested == 1 or world_size == 1:
        return 1
    if requested:
        BatchPlan(batch, requested, world_size)  # refuses what does not fit
        return requested
    timed = [(t, g) for g in range(1, world_size + 1) if world_size % g == 0 and g <= max(batch, 1)
             for t in [predicted_time(batch, branches, world_size, g, group_time)] if t is not None]
    return min(timed, key=lambda tg: (round(tg[0], 9), tg[1]))[1] if timed else 1


def batch_rows(t: torch.Tensor, total: int, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo:hi`` of a per-sample tensor as ComfyUI would batch it for ``total`` samples: one
    row broadcasts (kept), other row counts repeat to ``total`` (comfy.utils.repeat_to_batch_size)."""
    if t.ndim == 0 or t.shape[0] == 1:
        return t
    if t.shape[0] != total:
        t = t.repeat([math.ceil(total / t.shape[0])] + [1] * (t.ndim - 1))[:total]
    return t[lo:hi]


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


class BatchExchange:
    """The branch exchange of one batch group over the world: ``rank`` / ``world_size`` are the
    group's; every rank sends its rows padded to the largest share; the result keeps this
    group's ranks, world rank 0's stop request, and a failure of any rank in any group."""

    def __init__(self, world: Exchange, plan: BatchPlan) -> None:
        self.world, self.plan = world, plan
        self.group = plan.group_of(world.rank)
        self.rank = world.rank % plan.per_group
        self.world_size = plan.per_group

    def gather(self, local: Sequence[torch.Tensor | None], slots: int, like: torch.Tensor,
               stop: bool = False, failed: bool = False) -> Gathered:
        rows, n = self.plan.max_share, like.shape[0]
        padded = [None if p is None else pad_rows(p, rows) for p in local]
        got = self.world.gather(padded, slots, pad_rows(like, rows), stop=stop, failed=failed)
        first = self.group * self.plan.per_group
        mine = range(first, first + self.plan.per_group)
        preds = tuple(tuple(p[:n] for p in got.preds[r]) for r in mine)
        anyone_failed = any(f[FAILED] for f in got.flags)
        flags = tuple((got.flags[0][STOP] if i == 0 else False,
                       got.flags[r][FAILED] or (i == 0 and anyone_failed)) for i, r in enumerate(mine))
        return Gathered(preds, flags)


def gather_batch(world: Exchange, plan: BatchPlan, out: torch.Tensor) -> torch.Tensor:
    """The whole batch, in order, on every rank, from each group leader's rows."""
    got = world.gather([pad_rows(out, plan.max_share)], 1, pad_rows(out, plan.max_share))
    parts = [got.preds[g * plan.per_group][0][:plan.share(g)] for g in range(plan.groups)]
    return torch.cat(parts)
