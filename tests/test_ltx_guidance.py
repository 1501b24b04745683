"""LTX-2 multimodal guidance: cfg_runtime.guidance.ltx against ltx-core's MultiModalGuider.

Tolerance: float32 inputs must match the oracle bit for bit (same operations in the
same order on the same tensor). bfloat16 inputs are compared with the oracle fed
float32 upcasts and cast back to bfloat16 -- what ltx-core >= 1.1.6 does inside
``calculate`` -- and must match bit for bit too. ltx-core 1.0.0 (pinned by
scripts/setup_env.sh) computes in the input dtype instead; that variant is checked
with a bf16 rounding bound in ``test_bf16_close_to_native_bf16_oracle``.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from cfg_runtime.guidance.ltx import (
    BRANCHES,
    ModalityGuidance,
    guide_modality,
    needed_branches,
    skips_step,
)

SHAPES = [
    (1, 128, 3, 4, 6),  # video latent [B, 128, F, H, W]
    (2, 128, 2, 3, 5),
    (1, 8, 5, 16),  # audio latent [B, 8, T, 16]
    (2, 8, 7, 16),
    (1, 24, 128),  # patchified tokens [B, T, D], ltx-core's own layout
]
GRID = list(itertools.product([1.0, 3.0, 7.0], [0.0, 1.0], [1.0, 3.0], [0.0, 0.7, 1.0]))


def _params(cfg: float, stg: float, modality: float, rescale: float, skip_step: int = 0) -> ModalityGuidance:
    return ModalityGuidance(cfg=cfg, stg=stg, stg_blocks=(29,) if stg else (), modality=modality,
                            rescale=rescale, skip_step=skip_step)


def _branches(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    # Distinct scales/offsets per pass so that std(c) != std(pred) and rescale matters.
    return [(torch.randn(shape, generator=g) * s + o).to(dtype) for s, o in ((1.0, 0.0), (1.3, 0.1), (0.8, -0.2), (1.1, 0.05))]


def _oracle(params: ModalityGuidance, cond, negative, perturbed, isolated) -> torch.Tensor:
    """ltx-core's calculate, fed float32 and cast back (ltx-core >= 1.1.6 behaviour on any version).

    Absent passes are 0.0, as ltx_pipelines' _guided_denoise passes them.
    """
    guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle: run scripts/setup_env.sh")
    guider = guiders.MultiModalGuider(params=_oracle_params(guiders, params))
    up = lambda t: t.float() if t is not None else 0.0  # noqa: E731
    return guider.calculate(up(cond), up(negative), up(perturbed), up(isolated)).to(cond.dtype)


def _oracle_params(guiders, p: ModalityGuidance):
    return guiders.MultiModalGuiderParams(cfg_scale=p.cfg, stg_scale=p.stg, stg_blocks=list(p.stg_blocks),
                                          rescale_scale=p.rescale, modality_scale=p.modality, skip_step=p.skip_step)


def _inputs(params: ModalityGuidance, tensors):
    c, n, p, i = tensors
    return (c, n if params.needs_negative else None, p if params.needs_perturbed else None,
            i if params.needs_isolated else None)


# ---------------------------------------------------------------- formula vs oracle

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cfg,stg,modality,rescale", GRID)
def test_matches_oracle_bitwise(cfg, stg, modality, rescale, dtype):
    pytest.importorskip("ltx_core", reason="ltx-core is the oracle: run scripts/setup_env.sh")
    params = _params(cfg, stg, modality, rescale)
    params.validate()
    for k, shape in enumerate(SHAPES):
        args = _inputs(params, _branches(shape, dtype, seed=1000 + k))
        ours = guide_modality(params, *args)
        ref = _oracle(params, *args)
        assert ours.dtype == dtype and ours.shape == args[0].shape
        assert torch.equal(ours, ref), f"shape {shape}: max diff {(ours.float() - ref.float()).abs().max()}"


def test_extra_passes_are_ignored_like_the_oracle():
    """Passes given but not needed contribute exactly 0, as (scale-neutral) terms do in ltx-core."""
    pytest.importorskip("ltx_core", reason="ltx-core is the oracle: run scripts/setup_env.sh")
    params = _params(1.0, 0.0, 1.0, 0.7)
    c, n, p, i = _branches((2, 8, 5, 16), torch.float32, seed=7)
    assert torch.equal(guide_modality(params, c, n, p, i), _oracle(params, c, n, p, i))
    assert torch.equal(guide_modality(params, c, n, p, i), guide_modality(params, c))


def test_random_parameters_match_oracle():
    """Non-round scales (hypothesis): fp32 stays bit-exact."""
    pytest.importorskip("ltx_core", reason="ltx-core is the oracle: run scripts/setup_env.sh")
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
    @hypothesis.given(
        cfg=st.floats(-2.0, 12.0), stg=st.floats(-1.0, 3.0), modality=st.floats(-1.0, 5.0),
        rescale=st.floats(0.0, 1.0), shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**16),
    )
    def check(cfg, stg, modality, rescale, shape, seed):
        params = ModalityGuidance(cfg=cfg, stg=stg, stg_blocks=(3,), modality=modality, rescale=rescale)
        args = _inputs(params, _branches(shape, torch.float32, seed))
        assert torch.equal(guide_modality(params, *args), _oracle(params, *args))

    check()


def test_rescale_uses_std_over_the_whole_tensor():
    """std over all elements, batch included, unbiased; not per sample or per channel."""
    params = ModalityGuidance(cfg=3.0, rescale=1.0)
    c, n, _, _ = _branches((2, 8, 5, 16), torch.float32, seed=3)
    out = guide_modality(params, c, n)
    raw = c + 2.0 * (c - n)
    expected = raw * (c.std(unbiased=True) / raw.std(unbiased=True))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert math.isclose(out.std().item(), c.std().item(), rel_tol=1e-5)
    # per-sample std would differ: the two samples share one factor
    assert not torch.allclose(out[0].std(), c[0].std(), rtol=1e-3)


def test_bf16_close_to_native_bf16_oracle():
    """ltx-core 1.0.0 computes in the input dtype. We compute in fp32 (like >= 1.1.6), so
    against a native-bf16 oracle the results differ by bf16 rounding of the intermediates:
    bounded here by 8 bf16 ulps (2**-7 relative each) of the largest intermediate magnitude."""
    guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle")
    for cfg, stg, modality, rescale in GRID:
        params = _params(cfg, stg, modality, rescale)
        c, n, p, i = _inputs(params, _branches((2, 128, 2, 3, 5), torch.bfloat16, seed=11))
        native = guiders.MultiModalGuider(params=_oracle_params(guiders, params)).calculate(
            c, n if n is not None else 0.0, p if p is not None else 0.0, i if i is not None else 0.0)
        ours = guide_modality(params, c, n, p, i)
        scale = max(abs(cfg - 1), abs(stg), abs(modality - 1), 1.0) * 2 * c.float().abs().max().item()
        assert (ours.float() - native.float()).abs().max().item() <= 8 * 2**-7 * scale


def test_no_guidance_returns_cond_values():
    c = torch.randn(1, 8, 4, 16, dtype=torch.bfloat16)
    assert torch.equal(guide_modality(ModalityGuidance(), c), c)


def test_result_keeps_device_and_dtype():
    c, n = torch.randn(2, 3, dtype=torch.float16), torch.randn(2, 3, dtype=torch.float16)
    out = guide_modality(ModalityGuidance(cfg=2.0, rescale=0.5), c, n)
    assert out.dtype == torch.float16 and out.device == c.device


# ---------------------------------------------------------------- skip_step

@pytest.mark.parametrize("skip_step", [0, 1, 2, 3, 5])
def test_skips_step_matches_oracle(skip_step):
    guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle")
    params = _params(3.0, 1.0, 3.0, 0.7, skip_step=skip_step)
    oracle = guiders.MultiModalGuider(params=_oracle_params(guiders, params))
    for step in range(60):
        assert skips_step(params, step) == oracle.should_skip_step(step), step


def test_skip_step_pattern():
    assert [skips_step(ModalityGuidance(skip_step=0), s) for s in range(4)] == [False] * 4
    assert [skips_step(ModalityGuidance(skip_step=1), s) for s in range(6)] == [False, True] * 3
    assert [skips_step(ModalityGuidance(skip_step=2), s) for s in range(6)] == [False, True, True] * 2
    with pytest.raises(ValueError, match="0-based"):
        skips_step(ModalityGuidance(skip_step=1), -1)


def test_skip_loop_reuses_previous_guided_result():
    """ltx-pipelines' loop: denoised = last_denoised if should_skip_step(i) else calculate(...)."""
    guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle")
    params = _params(3.0, 1.0, 3.0, 0.7, skip_step=2)
    oracle = guiders.MultiModalGuider(params=_oracle_params(guiders, params))
    ref_last = ours_last = None
    for step in range(9):
        c, n, p, i = _branches((1, 8, 5, 16), torch.float32, seed=step)
        ref_last = ref_last if oracle.should_skip_step(step) else oracle.calculate(c, n, p, i)
        if skips_step(params, step):
            assert needed_branches(params, step) == ()
        else:
            assert needed_branches(params, step) == BRANCHES
            ours_last = guide_modality(params, c, n, p, i)
        assert torch.equal(ours_last, ref_last), step


def test_needed_branches_follow_oracle_flags():
    guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle")
    for cfg, stg, modality, rescale in GRID + [(1.0 + 1e-12, 1e-12, 1.0 - 1e-12, 0.0)]:
        params = ModalityGuidance(cfg=cfg, stg=stg, stg_blocks=(0,), modality=modality, rescale=rescale)
        oracle = guiders.MultiModalGuider(params=_oracle_params(guiders, params))
        flags = (oracle.do_unconditional_generation(), oracle.do_perturbed_generation(),
                 oracle.do_isolated_modality_generation())
        assert (params.needs_negative, params.needs_perturbed, params.needs_isolated) == flags
        expected = ("cond",) + tuple(b for b, f in zip(BRANCHES[1:], flags) if f)
        assert needed_branches(params, 0) == expected


# ---------------------------------------------------------------- defaults and validation

def test_official_defaults():
    # ltx_pipelines/utils/constants.py (LTX_2_PARAMS, LTX_2_3_PARAMS, LTX_2_3_HQ_PARAMS)
    v = dict(cfg=3.0, stg=1.0, modality=3.0, rescale=0.7, skip_step=0)
    a = dict(v, cfg=7.0)
    assert ModalityGuidance.LTX2_VIDEO == ModalityGuidance(stg_blocks=(29,), **v)
    assert ModalityGuidance.LTX2_AUDIO == ModalityGuidance(stg_blocks=(29,), **a)
    assert ModalityGuidance.LTX23_VIDEO == ModalityGuidance(stg_blocks=(28,), **v)
    assert ModalityGuidance.LTX23_AUDIO == ModalityGuidance(stg_blocks=(28,), **a)
    assert ModalityGuidance.official("2.0") == (ModalityGuidance.LTX2_VIDEO, ModalityGuidance.LTX2_AUDIO)
    assert ModalityGuidance.official("2.3") == (ModalityGuidance.LTX23_VIDEO, ModalityGuidance.LTX23_AUDIO)
    assert ModalityGuidance.LTX23_HQ_AUDIO.rescale == 1.0 and not ModalityGuidance.LTX23_HQ_VIDEO.needs_perturbed
    for name in ("LTX2_VIDEO", "LTX2_AUDIO", "LTX23_VIDEO", "LTX23_AUDIO", "LTX23_HQ_VIDEO", "LTX23_HQ_AUDIO"):
        getattr(ModalityGuidance, name).validate(num_blocks=48)
    with pytest.raises(ValueError, match="Unknown LTX version"):
        ModalityGuidance.official("1.0")


def test_is_data():
    p = ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=[29, 30], modality=3.0, rescale=0.7)
    assert p.stg_blocks == (29, 30)
    assert hash(p) == hash(ModalityGuidance(**dataclasses.asdict(p)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.cfg = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs,match", [
    (dict(skip_step=-1), "skip_step must be >= 0"),
    (dict(skip_step=1.5), "skip_step must be a whole number"),
    (dict(skip_step=True), "skip_step must be a whole number"),
    (dict(rescale=-0.1), r"rescale must be in \[0, 1\]"),
    (dict(rescale=1.5), r"rescale must be in \[0, 1\]"),
    (dict(cfg=float("nan")), "cfg must be a finite number"),
    (dict(stg=float("inf"), stg_blocks=(1,)), "stg must be a finite number"),
    (dict(modality="3"), "modality must be a finite number"),
    (dict(stg=1.0, stg_blocks=(-1,)), "negative index -1"),
    (dict(stg=1.0, stg_blocks=(2, 2)), "lists a block twice"),
    (dict(stg=1.0, stg_blocks=(1.0,)), "whole numbers"),
    (dict(stg=1.0, stg_blocks=()), "stg_blocks is empty"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModalityGuidance(**kwargs).validate()


def test_validation_against_block_count():
    ModalityGuidance(stg=1.0, stg_blocks=(47,)).validate(num_blocks=48)
    with pytest.raises(ValueError, match="out of range: this model has 48 transformer blocks"):
        ModalityGuidance(stg=1.0, stg_blocks=(48,)).validate(num_blocks=48)
    ModalityGuidance(stg=0.0, stg_blocks=()).validate()  # STG off: no blocks needed


@pytest.mark.parametrize("missing", ["negative", "perturbed", "isolated"])
def test_missing_needed_pass_is_named(missing):
    params = ModalityGuidance.LTX2_VIDEO
    c = torch.randn(1, 8, 3, 16)
    passes = dict(negative=c + 1, perturbed=c - 1, isolated=c * 2)
    passes[missing] = None
    with pytest.raises(ValueError, match=f"'{missing}' prediction is None"):
        guide_modality(params, c, **passes)


def test_shape_mismatch_is_named():
    c = torch.randn(1, 8, 3, 16)
    with pytest.raises(ValueError, match="'negative' prediction has shape"):
        guide_modality(ModalityGuidance(cfg=3.0), c, negative=torch.randn(2, 8, 3, 16))


# --- which passes a step runs, and with which streams (the LTX-2 rule, issue 13) ---------------

def _ltx_policy(video: ModalityGuidance, audio: ModalityGuidance):
    from cfg_runtime.guidance.presets import ltx2_multimodal

    return ltx2_multimodal(video, audio)


def _active(policy, step, modalities):
    return {b.name: (b.run_video, b.run_audio) for b in policy.active_branches(step, modalities)}


ALL = ("cond", "negative", "perturbed", "isolated")


def test_video_only_latent_ignores_audio_parameters():
    """On a video-only latent the audio parameters ask for nothing: a step the video skips runs
    no forward, and a pass only audio would need does not run."""
    v = ModalityGuidance(cfg=3.0, stg=0.0, modality=1.0, skip_step=1)
    a = ModalityGuidance(cfg=7.0, stg=1.0, stg_blocks=(1,), modality=3.0, skip_step=0)
    pol = _ltx_policy(v, a)
    assert pol.names == ALL
    assert [tuple(_active(pol, s, 1)) for s in range(4)] == [("cond", "negative"), (), ("cond", "negative"), ()]
    assert all(flags == (True, True) for s in range(4) for flags in _active(pol, s, 1).values())
    # audio+video: step 1 still runs (audio is guided), without the video stream
    assert _active(pol, 1, 2) == {n: (False, True) for n in ALL}
    assert _active(pol, 0, 2) == {n: (True, True) for n in ALL}


def test_pass_only_a_skipping_modality_needs_does_not_run():
    v = ModalityGuidance(cfg=1.0, stg=1.0, stg_blocks=(2,), modality=1.0, skip_step=0)
    a = ModalityGuidance(cfg=7.0, stg=0.0, modality=3.0, skip_step=1)
    pol = _ltx_policy(v, a)
    assert _active(pol, 0, 2) == {n: (True, True) for n in ALL}
    assert _active(pol, 1, 2) == {"cond": (True, False), "perturbed": (True, False)}  # audio off, its passes too
    assert _active(pol, 2, 2) == {n: (True, True) for n in ALL}
    # both skip on odd steps: nothing runs
    both = _ltx_policy(dataclasses.replace(v, skip_step=1), a)
    assert _active(both, 1, 2) == {} and _active(both, 3, 2) == {}


def test_near_neutral_scale_keeps_the_pass_another_modality_runs():
    """cfg within math.isclose of 1 needs no pass, but when the other modality runs it, ltx-pipelines
    uses it with the tiny weight: so the rule keeps it even where only that modality is guided."""
    v = ModalityGuidance(cfg=1.0 + 1e-12)
    a = ModalityGuidance(cfg=7.0, skip_step=1)
    pol = _ltx_policy(v, a)
    assert not v.needs_negative and pol.names == ("cond", "negative")
    assert _active(pol, 1, 2) == {"cond": (True, False), "negative": (True, False)}
    alone = _ltx_policy(v, ModalityGuidance())
    assert alone.names == ("cond",) and _active(alone, 1, 2) == {"cond": (True, True)}


def test_combine_uses_a_pass_run_for_the_other_modality_like_the_oracle():
    guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle")
    p = ModalityGuidance(cfg=1.0 + 1e-12, rescale=0.5)
    c, n, _, _ = _branches((1, 8, 5, 16), torch.float32, seed=3)
    oracle = guiders.MultiModalGuider(guiders.MultiModalGuiderParams(cfg_scale=p.cfg, rescale_scale=p.rescale))
    assert torch.equal(guide_modality(p, c, negative=n), oracle.calculate(c, n, 0.0, 0.0))
    assert torch.equal(guide_modality(p, c), oracle.calculate(c, 0.0, 0.0, 0.0))
    big = ModalityGuidance(cfg=1.0 + 1e-12, rescale=0.5)  # (the tiny weight is below fp32 resolution here)
    c2 = c * 1e-30
    assert torch.equal(guide_modality(big, c2, negative=n * 1e-30), oracle.calculate(c2, n * 1e-30, 0.0, 0.0))
