"""The batch split's pure rules (parallel/batch.py): shares, the planner, per-sample rows."""
from __future__ import annotations

import pytest
import torch

from cfg_runtime.errors import GroupConfigError
from cfg_runtime.parallel.batch import BATCH_ENV, BatchPlan, batch_rows, batch_split_from_env, plan_batch_groups


@pytest.mark.parametrize("total,groups,bounds", [
    (4, 2, [(0, 2), (2, 4)]), (3, 2, [(0, 2), (2, 3)]), (5, 4, [(0, 2), (2, 3), (3, 4), (4, 5)]),
    (4, 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
])
def test_uneven_batches_split_as_evenly_as_possible(total, groups, bounds):
    plan = BatchPlan(total, groups, groups * 2)
    assert [plan.bounds(g) for g in range(groups)] == bounds
    assert plan.max_share == bounds[0][1] and plan.per_group == 2
    assert [plan.group_of(r) for r in range(groups * 2)] == [g for g in range(groups) for _ in (0, 1)]


@pytest.mark.parametrize("branches,batch,expected", [
    (2, 4, {2: 1, 4: 2, 8: 4}),   # plain CFG: a tie on 2 GPUs keeps the exact branch split
    (2, 3, {2: 1, 4: 2, 8: 2}),   # at most the batch in groups
    (1, 4, {2: 2, 4: 4, 8: 4}),   # one branch: the batch is all there is to split
    (4, 4, {2: 1, 4: 1, 8: 2}),
])
def test_auto_plan(branches, batch, expected):
    assert {w: plan_batch_groups(batch, branches, w, 0) for w in expected} == expected


def test_forced_and_refused():
    assert plan_batch_groups(4, 2, 4, 1) == 1 and plan_batch_groups(4, 2, 4, 4) == 4
    for bad in (3, 8):
        with pytest.raises(GroupConfigError, match="must divide the ranks and be at most the batch"):
            plan_batch_groups(4, 2, 4, bad)
    with pytest.raises(GroupConfigError, match="'auto'"):
        plan_batch_groups(4, 2, 4, -1)


def test_rows_follow_comfyui_batching():
    """One row broadcasts; the batch's own rows are cut; other counts repeat first (repeat_to_batch_size)."""
    one, four, two = torch.arange(1.0).view(1, 1), torch.arange(4.0).view(4, 1), torch.arange(2.0).view(2, 1)
    assert batch_rows(one, 4, 2, 4) is one
    assert batch_rows(four, 4, 2, 4).flatten().tolist() == [2.0, 3.0]
    assert batch_rows(two, 4, 1, 3).flatten().tolist() == [1.0, 0.0]


def test_env(monkeypatch):
    for text, value in (("", 1), ("off", 1), ("auto", 0), ("4", 4)):
        monkeypatch.setenv(BATCH_ENV, text)
        assert batch_split_from_env() == value
    monkeypatch.setenv(BATCH_ENV, "many")
    with pytest.raises(GroupConfigError, match=BATCH_ENV):
        batch_split_from_env()


@pytest.mark.parametrize("branches,batch,world,degree,expected", [
    (1, 2, 4, 0, 2),   # one branch: 2 batch groups x sequence 2 (0.525) beats sequence 4 (2 x 0.2875)
    (1, 4, 4, 0, 4),   # enough samples: every rank its own sample (no split needed)
    (2, 2, 8, 0, 2),   # 2 batch groups x 2 branch groups x sequence 2
    (1, 2, 4, 4, 1),   # a forced sequence degree 4 needs groups of 4 ranks
    (1, 4, 4, 2, 2),   # a forced sequence degree 2: groups of 2 ranks at most 2 groups
])
def test_auto_plan_with_the_sequence_axis(branches, batch, world, degree, expected):
    from cfg_runtime.parallel.layout import group_step_time

    def one(ranks):
        return group_step_time(branches, ranks, degree, can_split=True, split_share=0.95)

    assert plan_batch_groups(batch, branches, world, 0, one) == expected
