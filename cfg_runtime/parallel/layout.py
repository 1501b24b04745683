"""How the ranks are laid out for one job: ranks = branch groups x sequence degree.

Rank ``r`` belongs to branch group ``r // degree`` at sequence rank ``r % degree``. The
branch plan assigns branches to branch groups exactly as it assigns them to ranks when
the degree is 1; inside a group every rank evaluates the group's branches on its share of
the video tokens (:mod:`.sequence`) and ends with the whole prediction. The branch exchange
then runs over the world and keeps each group's leader (sequence rank 0) only
(:class:`GroupedExchange`), so every rank combines the same bits.

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import GroupConfigError
from .exchange import FAILED, STOP, Exchange, Gathered


def parse_sequence_degree(text, what: str = "sequence_split") -> int:
    """The one reading of a sequence-split choice: "off" / "" / "1" -> 1 (no split), "auto" / "0"
    -> 0 (planned), "N" -> N. Raises GroupConfigError naming ``what`` on anything else."""
    value = str(text if text is not None else "").strip().lower()
    if value in ("", "off"):
        return 1
    if value == "auto":
        return 0
    if not value.isdigit():
        raise GroupConfigError(f"{what}={value[:40]!r}: use 'off', 'auto' or a whole number (1 = no split).")
    return int(value)


@dataclass(frozen=True)
class ParallelLayout:
    """``branch_groups`` groups of ``degree`` ranks each."""

    branch_groups: int
    degree: int

    def __post_init__(self) -> None:
        if self.branch_groups < 1 or self.degree < 1:
            raise GroupConfigError(f"A layout needs at least one branch group of at least one rank, got "
                                   f"{self.branch_groups} x {self.degree}.")

    @property
    def world_size(self) -> int:
        return self.branch_groups * self.degree

    def group_of(self, rank: int) -> int:
        return rank // self.degree

    def sequence_rank(self, rank: int) -> int:
        return rank % self.degree

    def leader(self, group: int) -> int:
        """World rank of a branch group's sequence rank 0."""
        return group * self.degree

    def describe(self) -> str:
        if self.degree == 1:
            return f"{self.branch_groups} branch rank(s), no sequence split"
        return (f"{self.branch_groups} branch group(s) x sequence degree {self.degree} "
                f"({self.world_size} ranks)")


def relative_step_time(branches: int, layout: ParallelLayout, split_share: float) -> float:
    """Predicted time of one step against one branch on one GPU (Amdahl: the split share
    scales with 1/degree, the rest stays; communication not counted)."""
    per_branch = (1.0 - split_share) + split_share / layout.degree
    return math.ceil(branches / layout.branch_groups) * per_branch


def plan_layout(branches: int, world_size: int, degree: int = 0, *, can_split: bool = True,
                split_share: float = 0.0) -> ParallelLayout:
    """The layout for ``branches`` branches on ``world_size`` ranks.

    ``degree`` 0 = automatic: the fastest predicted layout that uses every rank (ties go to
    more branch groups: branch parallelism needs no collectives inside a forward and stays
    bit-exact); ``degree`` >= 1 forces that sequence degree. ``can_split`` False (a model
    without a sequence split) gives one rank per branch group. ``split_share``: the share of one
    evaluation the split divides, the model family's figure (0 = a split never pays).
    """
    if world_size < 1:
        raise GroupConfigError(f"Parallel size must be at least 1, got {world_size}.")
    if degree:
        if degree < 1 or world_size % degree:
            raise GroupConfigError(f"Sequence degree {degree} does not divide the parallel size {world_size}: "
                                   f"use one of {_divisors(world_size)} (0 = automatic).")
        if degree > 1 and not can_split:
            raise GroupConfigError(f"Sequence degree {degree} was asked for, but this model has no sequence split "
                                   f"(see the README's table of model families): set it to off or auto.")
        return ParallelLayout(world_size // degree, degree)
    if not can_split or branches < 1:
        return ParallelLayout(world_size, 1)
    best = None
    for n in _divisors(world_size):
        layout = ParallelLayout(world_size // n, n)
        t = relative_step_time(branches, layout, split_share)
        if best is None or t < best[0] - 1e-9:
            best = (t, layout)
    return best[1]


def group_step_time(branches: int, ranks: int, degree: int, *, can_split: bool, split_share: float) -> float | None:
    """One sample's predicted step time on a (batch) group of ``ranks`` ranks with the layout
    :func:`plan_layout` gives it for the requested ``degree`` (0 = automatic); None where that
    degree does not fit (it does not divide ``ranks``, or the model has no split)."""
    if degree > 1 and (ranks % degree or not can_split):
        return None
    layout = plan_layout(branches, ranks, degree, can_split=can_split, split_share=split_share)
    return relative_step_time(branches, layout, split_share if can_split else 0.0)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class GroupedExchange:
    """The branch exchange as a branch group sees it: ``rank`` = its group, ``world_size`` = the
    number of groups. Every rank sends its predictions (the ranks of a group hold the same
    ones); the result keeps each group leader's row; a group failed when any of its ranks did;
    the stop request is world rank 0's."""

    def __init__(self, world: Exchange, layout: ParallelLayout) -> None:
        if world.world_size != layout.world_size:
            raise GroupConfigError(f"The layout {layout.describe()} needs {layout.world_size} ranks; the group has "
                                   f"{world.world_size}.")
        self.world = world
        self.layout = layout
        self.rank = layout.group_of(world.rank)
        self.world_size = layout.branch_groups

    def gather(self, local: Sequence[torch.Tensor | None], slots: int, like: torch.Tensor,
               stop: bool = False, failed: bool = False) -> Gathered:
        got = self.world.gather(local, slots, like, stop=stop, failed=failed)
        n = self.layout.degree
        preds = tuple(got.preds[self.layout.leader(g)] for g in range(self.world_size))
        flags = tuple((got.flags[0][STOP] if g == 0 else False,
                       any(got.flags[r][FAILED] for r in range(g * n, g * n + n)))
                      for g in range(self.world_size))
        return Gathered(preds, flags)
