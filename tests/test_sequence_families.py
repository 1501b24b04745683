"""The sequence split of every family behind the family layer (Wan, Flux, Qwen-Image), with tiny
real models built with ComfyUI's own classes on gloo CPU ranks: one evaluation split over 2, 3
and 4 ranks against the whole one (fp32 relative L2 <= 1e-6; every rank of a group ends with
the same bits), and the fallbacks (heads that do not divide: gathered K/V; fewer tokens than
ranks: padding). LTX-2 and LTX-Video: tests/test_sequence_parallel.py, test_sequence_ltxv.py."""
from __future__ import annotations

import pytest

from cfg_runtime.group import GroupSpec, WorkerGroup

TOLERANCE = 1e-6
BLOCKS = {"wan": 2, "flux": 4, "qwen_image": 2}  # blocks whose attention sees split tokens


def _needs(family: str) -> None:
    from support.paths import import_comfy

    import_comfy()
    import importlib.util

    module = {"wan": "comfy.ldm.wan.model", "flux": "comfy.ldm.flux.model",
              "qwen_image": "comfy.ldm.qwen_image.model"}[family]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"this ComfyUI has no {module} [needs ComfyUI 0.29]")


@pytest.fixture(scope="module")
def groups():
    made: dict[int, WorkerGroup] = {}

    def get(size: int) -> WorkerGroup:
        if size not in made:
            made[size] = WorkerGroup(GroupSpec(("cpu",) * size, step_timeout_s=120, start_timeout_s=240,
                                               worker_init="cfg_runtime.adapters.models.rank_setup:init_worker"))
            made[size].start()
        return made[size]

    yield get
    for g in made.values():
        g.teardown()


def _check(groups, job, route: str):
    from support.sequence_jobs import error_figures

    result = groups(job.degree).run(job)
    figures = error_figures(result.value["whole"], result.value["split"])["video"]
    stats = result.value["stats"]
    print(f"\n{job}: {figures} {stats}")
    assert figures["rel_l2"] <= TOLERANCE, figures
    assert float(result.value["whole"][0].abs().max()) > 0  # a real output, not zeros on both sides
    assert len({s["split_digest"] for s in result.summaries}) == 1
    assert stats["evaluations"] == 1 and stats["unsplit"] == 0
    assert stats[route] == BLOCKS[job.family], stats
    return stats


@pytest.mark.parametrize("family", ["wan", "flux", "qwen_image"])
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_split_matches_whole(groups, family, degree):
    """12 heads: Ulysses at every degree; 9 image tokens (Wan: 2 frames x 9) pad where the degree does not divide."""
    from support.family_jobs import FamilySplitEvalJob

    _needs(family)
    _check(groups, FamilySplitEvalJob(family, degree), "ulysses_calls")


@pytest.mark.parametrize("family", ["wan", "flux", "qwen_image"])
def test_fallbacks(groups, family):
    """2 heads over 3 ranks: gathered K/V; then 2 image tokens over 3 ranks: padding."""
    from support.family_jobs import FamilySplitEvalJob

    _needs(family)
    _check(groups, FamilySplitEvalJob(family, 3, heads=2), "gathered_kv_calls")
    stats = _check(groups, FamilySplitEvalJob(family, 3, frames=1, height=2, width=4), "ulysses_calls")
    assert stats["padding"] == 1
