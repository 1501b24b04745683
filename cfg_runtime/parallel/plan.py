"""Assign N branches to M ranks: every branch exactly once, deterministically."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import GroupConfigError
from ..guidance.policy import CFGBranch


@dataclass(frozen=True)
class BranchPlan:
    """Per rank, the names of the branches it evaluates (in slot order)."""

    branch_order: tuple[str, ...]
    assignment: tuple[tuple[str, ...], ...]
    costs: tuple[float, ...] = ()

    @property
    def world_size(self) -> int:
        return len(self.assignment)

    @property
    def slots(self) -> int:
        """Predictions each rank contributes to the exchange (idle ranks send zeros)."""
        return max((len(a) for a in self.assignment), default=0)

    def location(self, name: str) -> tuple[int, int]:
        """(rank, slot) holding a branch's prediction."""
        for rank, names in enumerate(self.assignment):
            if name in names:
                return rank, names.index(name)
        raise KeyError(name)

    @property
    def idle_ranks(self) -> tuple[int, ...]:
        return tuple(r for r, a in enumerate(self.assignment) if not a)

    def rank_loads(self) -> tuple[float, ...]:
        cost = dict(zip(self.branch_order, self.costs or (1.0,) * len(self.branch_order)))
        return tuple(sum(cost[n] for n in a) for a in self.assignment)

    def utilisation(self) -> float:
        """Mean busy share of the ranks over one step (1.0 = no rank waits)."""
        loads = self.rank_loads()
        peak = max(loads, default=0.0)
        return sum(loads) / (peak * len(loads)) if peak else 0.0

    def describe(self) -> str:
        parts = [f"rank {r}: {', '.join(a) if a else 'idle'}" for r, a in enumerate(self.assignment)]
        return f"{'; '.join(parts)} (utilisation {self.utilisation():.0%})"


def _check(branches: Sequence[CFGBranch], world_size: int) -> None:
    if world_size < 1:
        raise GroupConfigError(f"Parallel size must be at least 1, got {world_size}.")
    names = [b.name for b in branches]
    if len(set(names)) != len(names):
        raise GroupConfigError(f"Branch names must be unique, got {names}.")


def round_robin_plan(branches: Sequence[CFGBranch], world_size: int) -> BranchPlan:
    """Branch i goes to rank i mod M."""
    _check(branches, world_size)
    slots: list[list[str]] = [[] for _ in range(world_size)]
    for i, b in enumerate(branches):
        slots[i % world_size].append(b.name)
    return BranchPlan(tuple(b.name for b in branches), tuple(tuple(s) for s in slots), tuple(b.cost for b in branches))


def cost_balanced_plan(branches: Sequence[CFGBranch], world_size: int) -> BranchPlan:
    """Longest-processing-time first: the costliest branch goes to the least loaded rank.

    Ties break by branch order and rank index, so every rank computes the same plan.
    """
    _check(branches, world_size)
    order = sorted(range(len(branches)), key=lambda i: (-branches[i].cost, i))
    loads = [0.0] * world_size
    slots: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        rank = min(range(world_size), key=lambda r: (loads[r], len(slots[r]), r))
        slots[rank].append(i)
        loads[rank] += branches[i].cost
    assignment = tuple(tuple(branches[i].name for i in sorted(s)) for s in slots)
    return BranchPlan(tuple(b.name for b in branches), assignment, tuple(b.cost for b in branches))


PLANNERS = {"cost_balanced": cost_balanced_plan, "round_robin": round_robin_plan}


def make_plan(branches: Sequence[CFGBranch], world_size: int, strategy: str = "cost_balanced") -> BranchPlan:
    try:
        planner = PLANNERS[strategy]
    except KeyError:
        raise GroupConfigError(f"Unknown plan strategy {strategy!r}: choose one of {', '.join(PLANNERS)}.") from None
    return planner(branches, world_size)
