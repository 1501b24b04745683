"""CFG Parallel Group Status without a server: the timeline picture (nodes/timeline.py) and the
text summary drawn from a recorded last job; the per-evaluation rows DispatchStats records.
The node on a real server and in the browser: tests/test_workflows.py, tests/test_browser.py."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from cfg_runtime.parallel.dispatch import BranchDispatcher, DispatchStats
from cfg_runtime.guidance.presets import standard_cfg
from support.paths import REPO, comfyui_available


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"cfgp_{name}_under_test", REPO / "nodes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TL = _load("timeline")

JOB = {"seconds": 1.5, "per_rank": [
    {"forwards": {"cond": 3}, "evaluations": 3, "idle_evaluations": 0, "forward_s": 0.3, "exchange_s": 0.33,
     "timeline": [(s, ("cond",), 0.1, 0.11) for s in range(3)], "model_reloaded": True},
    {"forwards": {"negative": 3}, "evaluations": 3, "idle_evaluations": 0, "forward_s": 0.6, "exchange_s": 0.03,
     "timeline": [(s, ("negative",), 0.2, 0.01) for s in range(3)], "peak_gpu_bytes": 3 * 2**30},
    {"forwards": {}, "evaluations": 3, "idle_evaluations": 3, "forward_s": 0.0, "exchange_s": 0.63,
     "timeline": [(s, (), 0.0, 0.21) for s in range(3)]},
]}


def test_layout_splits_each_evaluation_into_forward_idle_exchange():
    cells = TL.layout(JOB)
    assert [len(c) for c in cells] == [3, 3, 3]
    # the slowest rank (negative: 0.2 s forward) sets the evaluation's span, 0.21 s; the
    # exchange is the shortest exchange of any rank (0.01 s); the rest is idle
    for i, starts in enumerate((0.0, 0.21, 0.42)):
        for rank, (fwd, idle) in enumerate(((0.1, 0.1), (0.2, 0.0), (0.0, 0.2))):
            e = cells[rank][i]
            assert e["start"] == pytest.approx(starts) and e["forward"] == pytest.approx(fwd)
            assert e["idle"] == pytest.approx(idle) and e["exchange"] == pytest.approx(0.01)


def test_picture_has_a_row_per_rank_in_branch_colours():
    img = TL.draw_timeline(JOB)
    assert img.size[0] == TL.WIDTH and img.size[1] == TL.TOP + 3 * (TL.ROW_H + TL.ROW_GAP) + 64
    mid = lambda rank: TL.TOP + rank * (TL.ROW_H + TL.ROW_GAP) + TL.ROW_H // 2  # noqa: E731
    assert img.getpixel((TL.LEFT + 3, mid(0))) == TL.BRANCH_COLOURS["cond"]
    assert img.getpixel((TL.LEFT + 3, mid(1))) == TL.BRANCH_COLOURS["negative"]
    assert img.getpixel((TL.LEFT + 3, mid(2))) == TL.IDLE  # rank 2 has no branch: it waits
    tensor = TL.to_image(img)
    assert tensor.shape == (1, img.size[1], TL.WIDTH, 3) and tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def test_no_job_yet_is_a_small_card():
    img = TL.draw_timeline({})
    assert img.size[0] == TL.WIDTH and img.size[1] < 200


def test_dispatcher_records_one_row_per_evaluation():
    policy = standard_cfg(3.0)
    dispatcher = BranchDispatcher(policy)
    x = torch.zeros(1, 4, 2, 2)
    for step in range(3):
        dispatcher(lambda branch: x + (1.0 if branch.name == "cond" else 0.5), x, step)
    rows = dispatcher.stats.as_dict()["timeline"]
    assert [(r[0], r[1]) for r in rows] == [(0, ("cond", "negative")), (1, ("cond", "negative")),
                                            (2, ("cond", "negative"))]
    assert all(r[2] >= 0 and r[3] >= 0 for r in rows)
    assert json.loads(json.dumps(rows))  # travels as plain data
    stats = DispatchStats()
    for i in range(DispatchStats.MAX_TIMELINE + 5):
        stats.record(i, ("cond",), 0.001, 0.0)
    assert len(stats.timeline) == DispatchStats.MAX_TIMELINE and stats.forward_s == pytest.approx(
        0.001 * (DispatchStats.MAX_TIMELINE + 5))


@pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI's comfy_api (V3 node API)")
def test_summary_names_every_rank_its_branches_and_memory():
    name = "cfgp_nodes_status_under_test"
    spec = importlib.util.spec_from_file_location(name, REPO / "nodes" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "nodes")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    gs = sys.modules[name + ".group_status"]
    report = {"state": "ready", "devices": ["cuda:0", "cuda:1", "cuda:2"], "backend": "nccl", "jobs_run": 4,
              "pids": [11, 12, 13], "rss_mib": {11: 700.0, 12: 701.5, 13: 699.0}, "loaded_model": "recipe:abc",
              "last_error": None, "last_job": JOB, "finishing_interrupted_job": False}
    text = gs.summary_text(report)
    assert "ready · 3 ranks · nccl · jobs run 4" in text and "model: recipe:abc" in text
    assert "rank 1  cuda:1  pid 12  RAM 701.5 MiB, GPU peak 3.00 GiB" in text
    assert "rank 0: cond×3" in text and "model loaded for this job" in text
    assert "rank 2: none (idle)" in text and "idle 3/3" in text
    assert "last job: 1.50 s, 3 steps, 3 evaluations" in text
    assert "not started" in gs.summary_text({"state": "not started", "hint": "h"})
    # the deprecated id keeps its contract: its text is the JSON report; the new one shows the summary
    assert gs.LEGACY["CFGParallelGroupStatus"].TEXT_AS_JSON and not gs.CFGParallelGroupStatus.TEXT_AS_JSON
