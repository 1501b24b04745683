"""The sequence split of every family behind the family layer (Wan, Flux, Qwen-Image), with tiny
real models built with ComfyUI's own classes on gloo CPU ranks: one evaluation split over 2, 3
and 4 ranks against the whole one (fp32 relative L2 <= 1e-6; every rank of a group ends with
the same bits), and the fallbacks (heads that do not divide: gathered K/V; fewer tokens than
ranks: padding). LTX-2 and LTX-Video: tests/test_sequence_parallel.py, test_sequence_ltxv.py."""
from __future__ import annotations

import pytest

from support.cpu_groups import cpu_groups

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
    """CPU worker groups by size, started on first use, torn down at the end."""
    yield from cpu_groups()


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


# --- whole sampling runs: size 1 against 1 x 2 and 2 x 2 (Wan, loaded by core detection) --------------

@pytest.fixture(scope="module")
def wan_model(tmp_path_factory):
    import comfy.sd

    from support.family_jobs import build_tiny_wan_split

    _needs("wan")
    path = build_tiny_wan_split(tmp_path_factory.mktemp("seq_wan") / "tiny_wan_split.safetensors")
    return comfy.sd.load_diffusion_model(str(path))


def _wan_sample(model, cfg: float, size: int, degree: int):
    import comfy.samplers
    import torch
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.guidance.presets import standard_cfg
    from support.family_jobs import WAN_TEXT_CHANNELS

    guider = MultiBranchGuider(model, standard_cfg(cfg), ParallelSettings(world_size=size, devices="cpu",
                               step_timeout_s=300, start_timeout_s=300, sequence_degree=degree))
    gen = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 6, WAN_TEXT_CHANNELS, generator=gen), {}]]
    guider.set_conds(positive, [[torch.randn(1, 6, WAN_TEXT_CHANNELS, generator=gen), {}]] if cfg != 1 else None)
    latent = torch.zeros(1, 16, 2, 4, 6)  # 2 frames of 2 x 3 tokens: 12 tokens
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 3).cpu()
    with torch.inference_mode():
        out = guider.sample(Noise_RandomNoise(3).generate_noise({"samples": latent}), latent,
                            comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=3)
    return out, guider.last_run


@pytest.mark.parametrize("cfg,size,layout", [(1.0, 2, [1, 2]), (5.0, 4, [2, 2])])
def test_wan_sampling_split(wan_model, cfg, size, layout):
    """cfg 1 (one branch) sampled at size 1 and at 1 x sequence 2; cfg 5 (cond + negative) at size 1
    and at 2 x sequence 2 (each branch group splits its branch)."""
    import torch

    from cfg_runtime.group import shutdown_group

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every rank
    try:
        ref, _ = _wan_sample(wan_model, cfg, 1, 1)
        out, last_run = _wan_sample(wan_model, cfg, size, 2)
        diff = (out.double() - ref.double())
        rel = float(diff.norm() / ref.double().norm())
        print(f"\nWan cfg {cfg}, layout {layout}: max abs {float(diff.abs().max()):.3g}, rel L2 {rel:.3g}")
        assert rel <= 1e-5
        ranks = last_run["per_rank"]
        assert all(s["layout"] == layout for s in ranks)
        assert all(s["sequence"]["evaluations"] > 0 and s["sequence"]["ulysses_calls"] > 0 for s in ranks)
    finally:
        torch.set_num_threads(before)
        shutdown_group()


def test_idle_ranks_are_named_with_the_setting_that_uses_them(wan_model):
    """cfg 1 on 2 ranks with the split off: one rank idle, and sequence_split auto would use it."""
    from cfg_runtime.adapters.sampling.sequence_job import idle_note
    from cfg_runtime.parallel.layout import ParallelLayout

    note = idle_note(1, ParallelLayout(2, 1), 1, wan_model)
    assert "1 of 2 ranks idle" in note and "sequence_split auto" in note and "Wan" in note, note
    assert idle_note(2, ParallelLayout(2, 1), 1, wan_model) == ""   # CFG on 2: nothing idle
    assert idle_note(1, ParallelLayout(1, 2), 0, wan_model) == ""   # the split is on
    assert idle_note(1, ParallelLayout(2, 1), 1, _plain_model()) == ""  # no split for this model: nothing to say


def _plain_model():
    import torch

    return torch.nn.Linear(2, 2)
