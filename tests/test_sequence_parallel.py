"""Sequence parallelism (Ulysses) for the LTX-2 audio+video model, with real gloo processes.

One evaluation of a tiny real ``LTXAVModel`` (ComfyUI's classes) split over 2, 3 and 4 CPU
ranks against the same evaluation whole on the same rank: fp32 relative L2 error <= 1e-6 on
both output streams, and every rank of a sequence group ends with the same bits. Covered:
Ulysses (heads divisible), the K/V all-gather fallback (heads not divisible), padding,
sequences shorter than the group, the three timestep layouts, two sequence groups in one
world. The layout planner and the degree-1 path need no processes.
"""
from __future__ import annotations

import pytest

from cfg_runtime.errors import GroupConfigError
from support.cpu_groups import cpu_groups
from cfg_runtime.parallel.layout import ParallelLayout, plan_layout
from cfg_runtime.parallel.sequence import SINGLE, heads_divisible, plan_shard
from support.paths import NEEDS_029, has_ltx2_av

TOLERANCE = 1e-6  # relative L2, fp32 (sequence splitting changes matmul shapes: not bitwise)
LAYERS = 3  # blocks of the tiny model: one video self-attention and one video->audio each

needs_ltxav = pytest.mark.skipif(not has_ltx2_av(), reason=f"{NEEDS_029} LTX-2 audio+video model (LTXAVModel)")


@pytest.fixture(scope="module")
def groups():
    """CPU worker groups by size, started on first use, torn down at the end."""
    yield from cpu_groups()


def _run(groups, job, world: int | None = None):
    from support.sequence_jobs import error_figures

    result = groups(world or job.degree).run(job)
    figures = error_figures(result.value["whole"], result.value["split"])
    print(f"\n{job}: {figures}")
    digests = {s["split_digest"] for s in result.summaries}
    assert len(digests) == 1, "the ranks of the sequence group ended with different outputs"
    for stream, f in figures.items():
        assert f["rel_l2"] <= TOLERANCE, f"{stream}: relative L2 error {f['rel_l2']:.3g} > {TOLERANCE}"
    return result.value["stats"], figures


@needs_ltxav
@pytest.mark.parametrize("degree,timestep", [(2, "scalar"), (2, "per_frame"), (2, "spatial"), (3, "scalar"),
                                             (3, "spatial"), (4, "scalar"), (4, "per_frame")])
def test_ulysses_split_matches_whole(groups, degree, timestep):
    from support.sequence_jobs import SplitEvalJob

    job = SplitEvalJob(degree, video_heads=2 * degree if degree != 3 else 3, timestep=timestep)
    stats, _ = _run(groups, job)
    assert stats["ulysses_calls"] == LAYERS and stats["gathered_kv_calls"] == LAYERS  # + v2a per block
    assert stats["unsplit"] == 0
    assert stats["padding"] == plan_shard(18, degree, 0, avoid=(7, 8)).padding


@needs_ltxav
@pytest.mark.parametrize("degree", [3, 4])
def test_heads_not_divisible_fall_back_to_gathered_keys(groups, degree):
    """2 video heads on 3 or 4 ranks: the video self-attention all-gathers K/V (queries stay local)."""
    from support.sequence_jobs import SplitEvalJob

    assert not heads_divisible(2, degree)
    stats, _ = _run(groups, SplitEvalJob(degree, video_heads=2))
    assert stats["ulysses_calls"] == 0 and stats["gathered_kv_calls"] == 2 * LAYERS


@needs_ltxav
@pytest.mark.parametrize("degree,shape", [(4, (1, 1, 2)), (3, (1, 1, 1)), (4, (1, 1, 3))],
                         ids=["2tokens-4ranks", "1token-3ranks", "3tokens-4ranks"])
def test_sequence_shorter_than_the_group(groups, degree, shape):
    """Fewer video tokens than ranks: the last ranks hold padding only."""
    from support.sequence_jobs import SplitEvalJob

    frames, height, width = shape
    job = SplitEvalJob(degree, frames=frames, height=height, width=width, video_heads=4 if degree == 4 else 3)
    stats, _ = _run(groups, job)
    assert stats["padding"] == degree - frames * height * width


@needs_ltxav
def test_padding_when_the_split_would_match_the_audio_length(groups):
    """14 tokens on 2 ranks would give 7 per rank = the audio length: 8 per rank, 2 rows of padding."""
    from support.sequence_jobs import SplitEvalJob

    stats, _ = _run(groups, SplitEvalJob(2, frames=7, height=1, width=2, audio_frames=7, text_tokens=5))
    assert stats["padding"] == 2


@needs_ltxav
def test_two_sequence_groups_in_one_world(groups):
    """World 4 = 2 branch groups x sequence 2 (two torch.distributed subgroups)."""
    from support.sequence_jobs import SplitEvalJob

    stats, _ = _run(groups, SplitEvalJob(2, video_heads=2, timestep="per_frame"), world=4)
    assert stats["ulysses_calls"] == LAYERS


@needs_ltxav
@pytest.mark.parametrize("route", ["direct", "override"])
def test_stg_pass_composes_with_the_split(groups, route):
    """The pack's STG patch (value passthrough on block 1's self-attentions) inside a split
    evaluation, by either of its routes: block 1 makes no video self-attention call."""
    from support.sequence_jobs import SplitEvalJob

    stats, _ = _run(groups, SplitEvalJob(2, video_heads=2, stg=route))
    assert stats["ulysses_calls"] == LAYERS - 1


@needs_ltxav
def test_degree_one_is_the_unchanged_path():
    from cfg_runtime.adapters.families.ltx2 import with_sequence_parallel

    options = {"transformer_options": {"x": 1}}
    same, wrapper = with_sequence_parallel(options, SINGLE)
    assert same is options and wrapper is None and "wrappers" not in options["transformer_options"]


# --- planning: no processes -------------------------------------------------------------------

@pytest.mark.parametrize("branches,world,expected", [
    (4, 8, (4, 2)),   # LTX-2's 4 passes on 8 GPUs
    (1, 4, (1, 4)),   # stage 2 (one branch) on 4 GPUs
    (1, 2, (1, 2)),   # CFG 1 on 2 GPUs
    (2, 2, (2, 1)),   # plain CFG on 2: branch parallelism (exact, no collectives in the forward)
    (4, 4, (4, 1)),
    (2, 4, (2, 2)),
    (1, 1, (1, 1)),
])
def test_plan_layout(branches, world, expected):
    layout = plan_layout(branches, world, split_share=0.26 / 0.374)  # LTX-2's measured share
    assert (layout.branch_groups, layout.degree) == expected
    assert layout.world_size == world


def test_plan_layout_uses_the_family_share():
    """The planner weighs a family's own share: none at all never splits; Wan's splits where LTX-2's does."""
    assert plan_layout(1, 2, split_share=0.0) == ParallelLayout(2, 1)
    assert plan_layout(1, 4, split_share=0.99) == ParallelLayout(1, 4)


def test_plan_layout_override_and_refusals():
    assert plan_layout(4, 8, degree=4) == ParallelLayout(2, 4)
    assert plan_layout(4, 8, degree=1) == ParallelLayout(8, 1)
    assert plan_layout(1, 4, can_split=False) == ParallelLayout(4, 1)
    with pytest.raises(GroupConfigError, match="does not divide the parallel size 6"):
        plan_layout(2, 6, degree=4)
    with pytest.raises(GroupConfigError, match="no sequence split"):
        plan_layout(1, 2, degree=2, can_split=False)


def test_layout_ranks():
    layout = ParallelLayout(4, 2)
    assert [layout.group_of(r) for r in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [layout.sequence_rank(r) for r in range(8)] == [0, 1] * 4
    assert [layout.leader(g) for g in range(4)] == [0, 2, 4, 6]


def test_plan_shard():
    s = plan_shard(18, 4, 3)
    assert (s.local, s.padding, s.start, s.real) == (5, 2, 15, 3)
    assert s.index("cpu").tolist() == [15, 16, 17, 17, 17]
    assert plan_shard(14, 2, 0, avoid=(7,)).local == 8
    assert plan_shard(2, 4, 3).index("cpu").tolist() == [1] and plan_shard(2, 4, 3).real == 0
    with pytest.raises(ValueError, match="empty"):
        plan_shard(0, 2, 0)
