"""The sequence split inside a sampling job: the layout, and what a rank runs with.

Both sides plan the same layout from the same facts (the policy's branch count, the world
size, the requested degree, the model family's split and its split share): the ComfyUI
process to refuse a bad request before any rank starts and to log the layout; every rank to
build its sequence group, its branch-group exchange and its model options. The model is
reached only through the family lookup (:func:`..families.family_of`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ...errors import GroupConfigError, clip
from ...parallel.layout import GroupedExchange, ParallelLayout, parse_sequence_degree, plan_layout
from ...parallel.sequence import cached_sequence_group
from ..families import Split, diffusion_model, family_of

log = logging.getLogger("cfg_parallel")

SEQUENCE_ENV = "CFG_PARALLEL_SEQUENCE_DEGREE"  # "auto" / "0" = planned, "1" / "off" = off (default), N = forced


def sequence_degree_from_env() -> int:
    """The requested sequence degree: 0 = automatic, 1 = no split (default), N = N."""
    return parse_sequence_degree(os.environ.get(SEQUENCE_ENV, ""), SEQUENCE_ENV)


def job_layout(policy, world_size: int, degree: int, model) -> ParallelLayout:
    """The layout of a job: ``len(policy.branches)`` branches on ``world_size`` ranks."""
    if not isinstance(degree, int) or degree < 0:
        raise GroupConfigError(f"The sequence degree must be 0 (automatic) or a whole number >= 1, got {clip(degree)}.")
    if degree == 1 or world_size == 1:
        return ParallelLayout(world_size, 1)
    family = family_of(model)
    return plan_layout(len(policy.branches), world_size, degree, can_split=family.can_split,
                       split_share=family.split_share)


def split_label(model) -> str | None:
    """The name of this model's family when it has a sequence split, else None."""
    family = family_of(model)
    return family.label if family.can_split else None


def log_layout(policy, layout: ParallelLayout, degree: int = 1, model=None) -> str:
    """Log the layout; when ranks sit idle that a split would use (the split was off), log one line
    saying so and return it (for the progress text), else return ""."""
    log.info("cfg-parallel layout for %s (%d branches): %s", policy.name, len(policy.branches), layout.describe())
    note = idle_note(len(policy.branches), layout, degree, model)
    if note:
        log.info("%s", note)
    return note


def idle_note(branches: int, layout: ParallelLayout, degree: int, model) -> str:
    """What a branch-only layout leaves idle and which setting would use it ("" if nothing, or if the
    split was asked for, or the model's family has none)."""
    idle = layout.world_size - min(branches, layout.world_size)
    if degree != 1 or layout.degree != 1 or idle == 0 or model is None:
        return ""
    family = family_of(model)
    if not family.can_split:
        return ""
    what = f"cfg-parallel: {idle} of {layout.world_size} ranks idle ({branches} branch(es) per step)"
    auto = plan_layout(branches, layout.world_size, 0, split_share=family.split_share)
    if auto.degree > 1:
        return f"{what}; sequence_split auto splits {family.label} over them ({auto.describe()})."
    return (f"{what}; a split needs the parallel size to be a multiple of the branch groups: parallel_size "
            f"{branches * 2} with sequence_split auto uses every rank.")


@dataclass(frozen=True)
class SequenceSetup:
    """What a rank samples with: the exchange the dispatcher sees (branch groups), the
    layout, and the family's split (None at degree 1) for the guider's model options."""

    exchange: Any
    layout: ParallelLayout
    split: Split | None = None

    def apply(self, guider) -> None:
        """Put the split into the guider's model options (a copy: the model is not changed)."""
        if self.split is not None:
            guider.model_options = self.split.apply(guider.model_options)

    def summary(self) -> dict:
        out = {"layout": [self.layout.branch_groups, self.layout.degree]}
        if self.split is not None:
            out["sequence"] = vars(self.split.stats).copy()
        return out


def sequence_setup(ctx, model, policy, degree: int, world: tuple[int, int] | None = None) -> SequenceSetup:
    """This rank's setup for a job; degree 1 (or a model with no split): the plain exchange.
    ``ctx`` is the rank's batch group (its rank and size in it); ``world`` = (rank, size) in the
    whole group, where the process groups live (a sequence group is ``degree`` consecutive world
    ranks, inside one batch group); None = ``ctx``'s own."""
    layout = job_layout(policy, ctx.world_size, degree, model)
    if layout.degree == 1:
        return SequenceSetup(ctx.exchange, layout)
    rank, size = world or (ctx.rank, ctx.world_size)
    group = cached_sequence_group(ctx.cache, rank, size, layout.degree)
    return SequenceSetup(GroupedExchange(ctx.exchange, layout), layout, model_split(model, group))


def model_split(model, group) -> Split:
    """The split of this model over ``group``, made by its family."""
    family = family_of(model)
    if not family.can_split:
        raise GroupConfigError(f"{family.label} has no sequence split: use sequence degree 1.")
    return family.make_split(diffusion_model(model), group)
