"""The sequence split of MiniMax-H3 (ComfyUI 0.33 only): one packed sequence of text, audio
and video tokens, split whole. Tiny real models (ComfyUI's own class) on gloo CPU ranks: one
evaluation split over 2, 3 and 4 ranks against the whole one (fp32 relative L2 <= 1e-6 on the
video and the audio output; every rank ends with the same bits), with denoise masks (per-token
modulation rows), the fallback (heads that do not divide: gathered K/V), and a whole sampling
run at size 1 against 1 x 2 (the model loaded by core detection, video + audio latent)."""
from __future__ import annotations

import pytest

from support.cpu_groups import cpu_groups

TOLERANCE = 1e-6
BLOCKS = 2


@pytest.fixture(scope="module", autouse=True)
def _needs_minimax():
    from support.paths import NEEDS_033, has_minimax_h3

    if not has_minimax_h3():
        pytest.skip(f"{NEEDS_033} this ComfyUI has no MiniMax-H3 (comfy/ldm/minimax)")


@pytest.fixture(scope="module")
def groups():
    """CPU worker groups by size, started on first use, torn down at the end."""
    yield from cpu_groups()


def _check(groups, job, route: str) -> dict:
    from support.sequence_jobs import error_figures

    result = groups(job.degree).run(job)
    streams = error_figures(result.value["whole"], result.value["split"])
    stats = result.value["stats"]
    print(f"\n{job}: {streams} {stats}")
    assert set(streams) == {"video", "audio"}
    assert all(f["rel_l2"] <= TOLERANCE for f in streams.values()), streams
    assert all(float(t.abs().max()) > 0 for t in result.value["whole"])  # real outputs, not zeros
    assert len({s["split_digest"] for s in result.summaries}) == 1
    assert stats["evaluations"] == 1 and stats["unsplit"] == 0
    assert stats[route] == BLOCKS, stats
    return stats


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_split_matches_whole(groups, degree):
    """12 heads: Ulysses at every degree; 7 text + 10 audio + 18 video = 35 tokens (padding at 2, 3, 4);
    degree 3 with denoise masks (three modulation levels over the video rows, two over the audio)."""
    from support.family_jobs import FamilySplitEvalJob

    stats = _check(groups, FamilySplitEvalJob("minimax_h3", degree, batch=1, masked=degree == 3), "ulysses_calls")
    assert stats["padding"] == -35 % degree


def test_fallback_gathered_kv(groups):
    """2 heads over 3 ranks: K/V gathered instead of the all-to-all."""
    from support.family_jobs import FamilySplitEvalJob

    _check(groups, FamilySplitEvalJob("minimax_h3", 3, heads=2, batch=1), "gathered_kv_calls")


def test_local_segments_cut_per_token_rows():
    """The modulation segments of one rank: clipped, shifted, per-token rows sliced, padding rows
    on the last token's row."""
    import torch

    from cfg_runtime.adapters.families.minimax import local_segments

    rows = torch.arange(10, 20)
    segments = [(0, 3, 1), (3, 13, rows), (13, 14, 4)]
    assert local_segments(segments, 0, 4, 4)[0] == (0, 3, 1)
    mid = local_segments(segments, 4, 4, 4)
    assert [(a, b) for a, b, _ in mid] == [(0, 4)] and mid[0][2].tolist() == [11, 12, 13, 14]
    last = local_segments(segments, 12, 2, 5)
    assert [(a, b) for a, b, _ in last] == [(0, 1), (1, 2), (2, 5)] and last[0][2].tolist() == [19]
    assert last[2][2] == 4


# --- a whole sampling run: size 1 against 1 x 2 (loaded by core detection, video + audio) ------

@pytest.fixture(scope="module")
def minimax_model(tmp_path_factory):
    import comfy.sd

    from support.tiny_minimax import build_tiny_minimax_file

    path = build_tiny_minimax_file(tmp_path_factory.mktemp("seq_minimax") / "tiny_minimax.safetensors")
    return comfy.sd.load_diffusion_model(str(path))


def _sample(model, size: int, degree: int):
    import comfy.nested_tensor
    import comfy.samplers
    import torch
    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.guidance.presets import standard_cfg
    from support.sampling import noise_for, sigmas_for
    from support.tiny_minimax import TEXT_DIM, TEXT_TOKENS

    guider = MultiBranchGuider(model, standard_cfg(1.0), ParallelSettings(world_size=size, devices="cpu",
                               step_timeout_s=300, start_timeout_s=300, sequence_degree=degree))
    gen = torch.Generator().manual_seed(5)
    guider.set_conds([[torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen), {}]], None)
    latent = model.model.latent_format.fix_empty_latent(torch.zeros(1, 32, 2, 4, 6))
    assert isinstance(latent, comfy.nested_tensor.NestedTensor)
    with torch.inference_mode():
        out = guider.sample(noise_for(latent, 3), latent, comfy.samplers.sampler_object("euler"), sigmas_for(model, 3), disable_pbar=True, seed=3)
    return out, guider.last_run


def test_sampling_split(minimax_model):
    """cfg 1 (one branch) sampled at size 1 and at 1 x sequence 2."""
    from cfg_runtime.group import shutdown_group
    from support.sampling import one_thread

    with one_thread():
        try:
            ref, _ = _sample(minimax_model, 1, 1)
            out, last_run = _sample(minimax_model, 2, 2)
        finally:
            shutdown_group()
    for name, a, b in zip(("video", "audio"), ref.unbind(), out.unbind()):
        diff = b.double() - a.double()
        rel = float(diff.norm() / a.double().norm())
        print(f"\nMiniMax-H3 {name}, layout [1, 2]: max abs {float(diff.abs().max()):.3g}, rel L2 {rel:.3g}")
        assert rel <= 1e-5 and float(a.abs().max()) > 0
    ranks = last_run["per_rank"]
    assert all(s["layout"] == [1, 2] for s in ranks)
    assert all(s["sequence"]["evaluations"] > 0 and s["sequence"]["ulysses_calls"] > 0 for s in ranks)
