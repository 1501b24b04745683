"""Sequence parallelism for a second model family: LTX-Video (ComfyUI's ``LTXVModel``, on
0.3.75 and 0.29), split at the block boundary by per-call replace patches. One evaluation of
a tiny real LTXVModel over 2 and 3 gloo CPU ranks against the whole one (fp32 relative L2
<= 1e-6); every rank of the group ends with the same bits."""
from __future__ import annotations

import pytest

from cfg_runtime.group import GroupSpec, WorkerGroup

TOLERANCE = 1e-6
BLOCKS = 2


@pytest.fixture(scope="module")
def groups():
    made: dict[int, WorkerGroup] = {}

    def get(size: int) -> WorkerGroup:
        if size not in made:
            made[size] = WorkerGroup(GroupSpec(("cpu",) * size, step_timeout_s=120, start_timeout_s=240,
                                               worker_init="cfg_runtime.comfy_model:init_worker"))
            made[size].start()
        return made[size]

    yield get
    for g in made.values():
        g.teardown()


@pytest.mark.parametrize("degree,per_token,shape", [
    (2, False, (3, 2, 3)),   # Ulysses (2 heads on 2 ranks), no padding
    (2, True, (3, 1, 3)),    # per-token timesteps, 1 padding row
    (3, False, (3, 2, 3)),   # 2 heads on 3 ranks: the gathered-K/V fallback
    (3, True, (1, 1, 2)),    # fewer tokens than ranks
])
def test_ltxv_split_matches_whole(groups, degree, per_token, shape):
    from support.sequence_jobs import LTXVSplitEvalJob, error_figures

    frames, height, width = shape
    job = LTXVSplitEvalJob(degree, frames=frames, height=height, width=width, per_token=per_token)
    result = groups(degree).run(job)
    figures = error_figures(result.value["whole"], result.value["split"])
    print(f"\n{job}: {figures['video']}")
    assert figures["video"]["rel_l2"] <= TOLERANCE
    assert len({s["split_digest"] for s in result.summaries}) == 1
    stats = result.value["stats"]
    assert stats["evaluations"] == 1 and stats["unsplit"] == 0
    assert stats["ulysses_calls" if degree == 2 else "gathered_kv_calls"] == BLOCKS
    assert stats["padding"] == -(-frames * height * width // degree) * degree - frames * height * width
