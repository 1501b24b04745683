"""The sequence split inside a sampling job: the layout, and what a rank runs with.

Both sides plan the same layout from the same facts (the policy's branch count, the world
size, the requested degree, whether the model has a split): the ComfyUI process to refuse
a bad request before any rank starts and to log the layout; every rank to build its
sequence group, its branch-group exchange and its model options.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ...errors import GroupConfigError, clip
from ...parallel.layout import GroupedExchange, ParallelLayout, plan_layout
from ...parallel.sequence import cached_sequence_group
from ..families.ltx2 import LTXAVSequenceParallel, diffusion_model, is_ltxav
from ..families.ltxv import BlockSplit

log = logging.getLogger("cfg_parallel")

SEQUENCE_ENV = "CFG_PARALLEL_SEQUENCE_DEGREE"  # "auto" / "0" = planned, "1" = off (default), N = forced


def sequence_degree_from_env() -> int:
    """The requested sequence degree: 0 = automatic, 1 = no split (default), N = N."""
    text = os.environ.get(SEQUENCE_ENV, "").strip().lower()
    if text in ("", "off"):
        return 1
    if text == "auto":
        return 0
    if not text.isdigit():
        raise GroupConfigError(f"{SEQUENCE_ENV}={clip(text)}: use 'auto', 'off' or a whole number (1 = no split).")
    return int(text)


def job_layout(policy, world_size: int, degree: int, model) -> ParallelLayout:
    """The layout of a job: ``len(policy.branches)`` branches on ``world_size`` ranks."""
    if not isinstance(degree, int) or degree < 0:
        raise GroupConfigError(f"The sequence degree must be 0 (automatic) or a whole number >= 1, got {clip(degree)}.")
    if degree == 1 or world_size == 1:
        return ParallelLayout(world_size, 1)
    return plan_layout(len(policy.branches), world_size, degree, can_split=can_split(model))


def log_layout(policy, layout: ParallelLayout) -> None:
    log.info("cfg-parallel layout for %s (%d branches): %s", policy.name, len(policy.branches), layout.describe())


@dataclass(frozen=True)
class SequenceSetup:
    """What a rank samples with: the exchange the dispatcher sees (branch groups), the
    layout, and the split's wrapper (None at degree 1) for the guider's model options."""

    exchange: Any
    layout: ParallelLayout
    split: LTXAVSequenceParallel | BlockSplit | None = None

    def apply(self, guider) -> None:
        """Put the split into the guider's model options (a copy: the model is not changed)."""
        if self.split is not None:
            guider.model_options = self.split.apply(guider.model_options)

    def summary(self) -> dict:
        out = {"layout": [self.layout.branch_groups, self.layout.degree]}
        if self.split is not None:
            out["sequence"] = vars(self.split.stats).copy()
        return out


def sequence_setup(ctx, model, policy, degree: int) -> SequenceSetup:
    """This rank's setup for a job; degree 1 (or a model with no split): the plain exchange."""
    layout = job_layout(policy, ctx.world_size, degree, model)
    if layout.degree == 1:
        return SequenceSetup(ctx.exchange, layout)
    group = cached_sequence_group(ctx.cache, ctx.rank, ctx.world_size, layout.degree)
    return SequenceSetup(GroupedExchange(ctx.exchange, layout), layout, model_split(model, group))


def can_split(model) -> bool:
    """Whether this model has a sequence split: LTX-2 audio+video and LTX-Video."""
    return is_ltxav(model) or _is_ltxv(model)


def _is_ltxv(model) -> bool:
    inner = diffusion_model(model)
    return type(inner).__name__ == "LTXVModel" and type(inner).__module__ == "comfy.ldm.lightricks.model"


def model_split(model, group):
    """The split of this model over ``group`` (LTX-2: a diffusion-model wrapper; LTX-Video: block patches)."""
    if is_ltxav(model):
        return LTXAVSequenceParallel(group)
    if _is_ltxv(model):
        return BlockSplit(group, len(diffusion_model(model).transformer_blocks))
    raise GroupConfigError(f"{type(diffusion_model(model)).__name__} has no sequence split: use sequence degree 1.")
