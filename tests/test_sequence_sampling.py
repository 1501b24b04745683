"""Whole sampling runs with the sequence split composed with branch parallelism, on a tiny
real LTX-2 audio+video checkpoint (ComfyUI 0.29's LTXAVModel) and real gloo CPU ranks.

The Multi-Branch Guider at size 1 (serial, in process) against: CFG 1 on 2 ranks as
sequence 2; the full LTX-2 policy (cond, negative, STG, modality-isolated) on 2 ranks as
1 x sequence 2, and on 4 ranks as 2 branch groups x sequence 2. Splitting changes matmul
shapes, so these are bounded (fp32 relative L2 <= 1e-5 after 4 steps), not bitwise; at
sequence degree 1 the run stays bit-identical to serial.
"""
from __future__ import annotations

import pytest
import torch

from support.paths import NEEDS_029
from support.sampling import noise_for, one_thread as single_thread, sigmas_for
from support.tiny_ltx2 import ltxav_available

pytestmark = pytest.mark.skipif(not ltxav_available(), reason=f"{NEEDS_029} LTX-2 audio+video model (LTXAVModel)")

if ltxav_available():
    import comfy.samplers

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.group import shutdown_group
    from cfg_runtime.guidance.ltx import ModalityGuidance
    from cfg_runtime.guidance.presets import ltx2_multimodal, standard_cfg
    from support import tiny_ltx2 as t2

STEPS, SEED = 4, 5
TOLERANCE = 1e-5  # relative L2 of the final latent, per stream (per evaluation: <= 1e-6)


def ltx2_policy():
    return ltx2_multimodal(
        ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(1,), modality=3.0, rescale=0.7, skip_step=0),
        ModalityGuidance(cfg=7.0, stg=0.5, stg_blocks=(1,), modality=2.0, rescale=0.7, skip_step=0))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = t2.build_tiny_ltxav(tmp_path_factory.mktemp("seq_sampling") / "tiny_ltxav.safetensors", seed=0)
    return t2.load_model(path)


@pytest.fixture(scope="module")
def latent():
    return t2.tiny_av_latent(width=96, height=32, length=17)  # 3 x 1 x 3 = 9 video tokens (1 padding row), 17 audio


@pytest.fixture(scope="module", autouse=True)
def _no_group_left():
    yield
    shutdown_group()


@pytest.fixture
def one_thread():
    """The ranks run one intra-op thread; the serial reference must too."""
    with single_thread():
        yield


def sample(model, policy, latent, size: int, degree: int = 1):
    settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=300, start_timeout_s=300,
                                sequence_degree=degree)
    guider = MultiBranchGuider(model, policy, settings)
    guider.set_conds(t2.tiny_av_conditioning(1), t2.tiny_av_conditioning(2))
    sigmas = sigmas_for(model, STEPS)
    with torch.inference_mode():
        out = guider.sample(noise_for(latent, SEED), latent["samples"],
                            comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=SEED)
    return tuple(out.unbind()), guider.last_run


def figures(ref, out) -> dict:
    result = {}
    for name, a, b in zip(("video", "audio"), ref, out):
        diff = b.double() - a.double()
        result[name] = {"max_abs": float(diff.abs().max()), "rel_l2": float(diff.norm() / a.double().norm())}
    return result


def check(ref, out, last_run, layout):
    f = figures(ref, out)
    print(f"\nlayout {layout}: {f}; rank 0: {last_run['per_rank'][0].get('sequence')}")
    for stream, v in f.items():
        assert v["rel_l2"] <= TOLERANCE, f"{stream}: relative L2 {v['rel_l2']:.3g} > {TOLERANCE}"
    for s in last_run["per_rank"]:
        assert s["layout"] == list(layout)
        seq = s["sequence"]
        assert seq["evaluations"] > 0 and seq["unsplit"] == 0 and seq["padding"] == 1
        # every block's video self-attention, except block 1 of the STG pass (value passthrough: token-local)
        assert seq["ulysses_calls"] == 3 * seq["evaluations"] - s["forwards"].get("perturbed", 0)
    return f


def test_cfg1_on_two_ranks_as_sequence_two(model, latent, one_thread):
    policy = standard_cfg(1.0)
    ref, _ = sample(model, policy, latent, 1)
    out, last_run = sample(model, policy, latent, 2, degree=0)  # planned: one branch on 2 ranks -> 1 x 2
    check(ref, out, last_run, (1, 2))


def test_ltx2_policy_sequence_two_and_two_by_two(model, latent, one_thread):
    policy = ltx2_policy()
    ref, _ = sample(model, policy, latent, 1)
    out, last_run = sample(model, policy, latent, 2, degree=2)  # 1 branch group x sequence 2
    check(ref, out, last_run, (1, 2))
    assert all(len(s["forwards"]) == 4 for s in last_run["per_rank"])  # every rank: all 4 passes, half the tokens
    out, last_run = sample(model, policy, latent, 4, degree=2)  # 2 branch groups x sequence 2
    check(ref, out, last_run, (2, 2))
    assert [sorted(s["forwards"]) for s in last_run["per_rank"][::2]] == \
        [sorted(s["forwards"]) for s in last_run["per_rank"][1::2]]  # both ranks of a group run its branches


def test_sequence_degree_one_stays_bit_identical(model, latent, one_thread):
    policy = ltx2_policy()
    ref, _ = sample(model, policy, latent, 1)
    out, last_run = sample(model, policy, latent, 2, degree=1)
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    assert all(s["layout"] == [2, 1] and "sequence" not in s for s in last_run["per_rank"])


def test_ltx2_two_stage_stage2_uses_every_rank(model, latent, one_thread, tmp_path, caplog):
    """The LTX2 Sampler's job (run_ltx2) on 2 ranks, sequence degree planned: stage 1 (4 passes)
    runs as 2 branch ranks, stage 2 (cond only) as one group of sequence 2; equal to size 1."""
    import logging

    from cfg_runtime.adapters.sampling.ltx_pipeline import StagePlan, run_ltx2

    upscaler = t2.load_latent_upscaler(t2.build_tiny_latent_upscaler(tmp_path / "up.safetensors"))
    vae = t2.load_ltx_vae(t2.build_tiny_ltx_vae(tmp_path / "vae.safetensors"))
    sigmas = sigmas_for(model, STEPS)

    def job(size: int, degree: int):
        settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=300, start_timeout_s=300,
                                    sequence_degree=degree)
        with torch.inference_mode():
            final, _ = run_ltx2(model, t2.tiny_av_conditioning(1), t2.tiny_av_conditioning(2), ltx2_policy(), latent,
                                comfy.samplers.sampler_object("euler"), sigmas, SEED, settings, StagePlan(True),
                                upscale_model=upscaler, vae=vae)
        return final["samples"].unbind()

    ref = job(1, 1)
    with caplog.at_level(logging.INFO, logger="cfg_parallel"):
        out = job(2, 0)
    layouts = [r.getMessage() for r in caplog.records if "cfg-parallel layout" in r.getMessage()]
    assert len(layouts) == 2 and "2 branch rank(s), no sequence split" in layouts[0], layouts
    assert "1 branch group(s) x sequence degree 2" in layouts[1], layouts
    f = figures(ref, out)
    print(f"\nLTX-2 two-stage, stage 1 2x1 / stage 2 1x2: {f}")
    assert all(v["rel_l2"] <= TOLERANCE for v in f.values())
