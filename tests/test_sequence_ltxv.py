"""Sequence parallelism for a second model family: LTX-Video (ComfyUI's ``LTXVModel``, on
0.3.75 and 0.29), split at the block boundary by per-call replace patches. One evaluation of
a tiny real LTXVModel over 2 and 3 gloo CPU ranks against the whole one (fp32 relative L2
<= 1e-6); every rank of the group ends with the same bits."""
from __future__ import annotations

import pytest

from support.cpu_groups import cpu_groups

TOLERANCE = 1e-6
BLOCKS = 2


@pytest.fixture(scope="module")
def groups():
    """CPU worker groups by size, started on first use, torn down at the end."""
    yield from cpu_groups()


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


@pytest.fixture(scope="module")
def ltxv_model(tmp_path_factory):
    from devkit.tiny_models import build_tiny_ltxv, load_tiny_ltxv

    return load_tiny_ltxv(build_tiny_ltxv(tmp_path_factory.mktemp("seq_ltxv") / "tiny_ltxv.safetensors", std=0.2))


def _sample(model, size: int, degree: int):
    import comfy.samplers
    import torch
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.guidance.presets import standard_cfg
    from devkit.tiny_models import tiny_conditioning

    guider = MultiBranchGuider(model, standard_cfg(3.0), ParallelSettings(world_size=size, devices="cpu",
                               step_timeout_s=300, start_timeout_s=300, sequence_degree=degree))
    guider.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    latent = {"samples": torch.zeros(1, 128, 3, 1, 3)}  # 9 tokens: 1 padding row on 2 ranks
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 4).cpu()
    with torch.inference_mode():
        out = guider.sample(Noise_RandomNoise(3).generate_noise(latent), latent["samples"],
                            comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=3)
    return out, guider.last_run


def test_ltxv_standard_cfg_sampling_split(ltxv_model):
    """standard_cfg (cond + negative) sampled at size 1, at 1 x sequence 2 and at 2 x sequence 2."""
    import torch

    from cfg_runtime.group import shutdown_group

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every rank
    try:
        ref, _ = _sample(ltxv_model, 1, 1)
        for size, layout in ((2, [1, 2]), (4, [2, 2])):
            out, last_run = _sample(ltxv_model, size, 2)
            diff = (out.double() - ref.double())
            rel = float(diff.norm() / ref.double().norm())
            print(f"\nLTX-Video standard_cfg, layout {layout}: max abs {float(diff.abs().max()):.3g}, rel L2 {rel:.3g}")
            assert rel <= 1e-5
            assert all(s["layout"] == layout and s["sequence"]["evaluations"] > 0 for s in last_run["per_rank"])
    finally:
        torch.set_num_threads(before)
        shutdown_group()
