"""The pack against an independent LTX-2 reference, for random per-modality settings (issue 13).

The reference (TEST ONLY, :class:`OfficialReference`) is written from ltx-pipelines' denoise
step, not from the pack: a ComfyUI ``CFGGuider`` that per step asks ltx-core's own
``MultiModalGuider`` (PyPI ltx-core) which passes to run (``do_*_generation``, any modality)
and whether a modality skips (``should_skip_step``); it calls the model once per pass
through ComfyUI's ``calc_cond_batch`` with a skipping modality's stream off (ComfyUI's
``run_vx`` / ``run_ax``, ltx-pipelines' ``enabled=False``), the modality-isolated pass through
ComfyUI's ``a2v_cross_attn`` / ``v2a_cross_attn`` keys, and the perturbed pass by swapping
the listed blocks' self-attention modules of the intended stream for ``to_out(to_v(x))``
modules for that one call; then it combines each modality with ``MultiModalGuider.calculate``
(fp32; 0.0 for a pass not run) and reuses the last result on skipped steps.

* hypothesis draws every per-modality parameter (cfg, stg and blocks, modality, rescale,
  skip_step) and audio+video or video-only latents: the pack at size 1 equals the reference
  bit for bit (torch.equal) and runs no more forwards than it;
* settings drawn the same way run at sizes 2, 3 and 4 (the in-process worker group, gloo CPU
  ranks) and equal size 1 bit for bit.

Needs ComfyUI 0.29 (LTX-2) and ltx-core; skipped otherwise.
"""
from __future__ import annotations

import contextlib
import random

import pytest
import torch

from support.paths import COMFYUI_DIR
from support.tiny_ltx2 import ltxav_available

pytestmark = pytest.mark.skipif(
    not ltxav_available(),
    reason=f"[needs ComfyUI 0.29] LTX-2 audio+video (comfy/ldm/lightricks/av_model.py); COMFYUI_DIR={COMFYUI_DIR} "
           f"has none")

guiders = pytest.importorskip("ltx_core.components.guiders", reason="ltx-core is the oracle: run scripts/setup_env.sh")
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

if ltxav_available():
    import comfy.samplers  # noqa: E402
    import comfy.utils  # noqa: E402

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings  # noqa: E402
    from cfg_runtime.group import shutdown_group  # noqa: E402
    from cfg_runtime.guidance.ltx import ModalityGuidance  # noqa: E402
    from cfg_runtime.guidance.presets import ltx2_multimodal  # noqa: E402
    from support import tiny_ltx2 as t2  # noqa: E402

STEPS = 4
SEED = 11
BLOCKS = 3  # the tiny model's depth

# the value pools of every parameter (hypothesis draws from them; the parallel test too)
CFG = (1.0, 0.5, 2.5, 3.0, 7.0)
STG = (0.0, 0.0, 0.5, 1.0, -0.3)
MODALITY = (1.0, 2.0, 3.0, 0.5)
RESCALE = (0.0, 0.45, 0.7, 1.0)
SKIP = (0, 0, 1, 2)


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return t2.load_model(t2.build_tiny_ltxav(tmp_path_factory.mktemp("ref") / "tiny_ltxav.safetensors", seed=3))


@pytest.fixture(scope="module")
def conds():
    return t2.tiny_av_conditioning(1), t2.tiny_av_conditioning(2)


@pytest.fixture(scope="module")
def latents():
    return {True: t2.tiny_av_latent(), False: t2.tiny_video_latent()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """CPU ranks run one intra-op thread; so must the in-process runs (same kernels, same bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    shutdown_group()


def sigmas_for(model):
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS).cpu()


def noise_for(latent):
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    return Noise_RandomNoise(SEED).generate_noise(latent)


def sample(guider, model, latent):
    with torch.inference_mode():
        out = guider.sample(noise_for(latent), latent["samples"], comfy.samplers.sampler_object("euler"),
                            sigmas_for(model), disable_pbar=True, seed=SEED)
    return tuple(out.unbind()) if getattr(out, "is_nested", False) else (out,)


def run_pack(model, video, audio, latent, conds, size=1):
    guider = MultiBranchGuider(model, ltx2_multimodal(video, audio),
                               ParallelSettings(world_size=size, devices="cpu", step_timeout_s=300, start_timeout_s=300))
    guider.set_conds(*conds)
    return sample(guider, model, latent), guider.last_run


# --------------------------------------------------------------------------------------
# the reference (TEST ONLY)
# --------------------------------------------------------------------------------------

class _Passthrough(torch.nn.Module):
    """A self-attention module whose attention output is V: to_out(gate * to_v(x))."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, context=None, mask=None, pe=None, k_pe=None, transformer_options={}):
        assert context is None
        a = self.attn
        out = a.to_v(x)
        if getattr(a, "to_gate_logits", None) is not None:
            b, t, _ = out.shape
            out = (out.view(b, t, a.heads, a.dim_head) * (2.0 * torch.sigmoid(a.to_gate_logits(x))).unsqueeze(-1))
            out = out.view(b, t, -1)
        return a.to_out(out)


@contextlib.contextmanager
def perturbed(dm, video_blocks, audio_blocks):
    """For one call: the listed blocks' video / audio self-attention modules are passthrough."""
    swapped = []
    try:
        for blocks, name in ((video_blocks, "attn1"), (audio_blocks, "audio_attn1")):
            for i in blocks:
                block = dm.transformer_blocks[i]
                swapped.append((block, name, getattr(block, name)))
                setattr(block, name, _Passthrough(getattr(block, name)))
        yield
    finally:
        for block, name, original in reversed(swapped):
            setattr(block, name, original)


def _core(p: "ModalityGuidance"):
    return guiders.MultiModalGuider(guiders.MultiModalGuiderParams(
        cfg_scale=p.cfg, stg_scale=p.stg, stg_blocks=list(p.stg_blocks), rescale_scale=p.rescale,
        modality_scale=p.modality, skip_step=p.skip_step))


class OfficialReference(comfy.samplers.CFGGuider if ltxav_available() else object):
    """ltx-pipelines' denoise step over ComfyUI's model calls (see the module doc)."""

    def __init__(self, model, video, audio, shapes, disable_skipping=True):
        super().__init__(model)
        self.disable_skipping = disable_skipping
        self.guiders = [_core(video), _core(audio)][:len(shapes)]
        self.shapes = shapes
        self.last = None
        self.forwards = 0

    def _run(self, which, x, timestep, model_options, **to):
        mo = dict(model_options, transformer_options={**model_options.get("transformer_options", {}), **to})
        out = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[which]], x, timestep, mo)[0]
        self.forwards += 1
        return comfy.utils.unpack_latents(out, self.shapes) if len(self.shapes) > 1 else [out]

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        step = int((sigmas[:-1] - float(timestep[0])).abs().argmin())
        gs = self.guiders
        skip = [g.should_skip_step(step) for g in gs]
        if all(skip):
            return self._pack(self.last)
        enabled = {}
        if len(gs) > 1 and self.disable_skipping:
            enabled = {"run_vx": not skip[0], "run_ax": not skip[1]}
        zero = [0.0] * len(gs)
        cond = self._run("positive", x, timestep, model_options, **enabled)
        neg = ptb = iso = zero
        if any(g.do_unconditional_generation() for g in gs):
            neg = self._run("negative", x, timestep, model_options, **enabled)
        if any(g.do_perturbed_generation() for g in gs):
            blocks = [g.params.stg_blocks if g.do_perturbed_generation() else [] for g in gs] + [[]]
            with perturbed(self.inner_model.diffusion_model, blocks[0], blocks[1]):
                ptb = self._run("positive", x, timestep, model_options, **enabled)
        if any(g.do_isolated_modality_generation() for g in gs):
            iso = self._run("positive", x, timestep, model_options, a2v_cross_attn=False, v2a_cross_attn=False,
                            **enabled)

        def f32(t):
            return t.float() if isinstance(t, torch.Tensor) else t

        out = []
        for i, g in enumerate(gs):
            if skip[i]:
                out.append(self.last[i])
            else:
                out.append(g.calculate(cond[i].float(), f32(neg[i]), f32(ptb[i]), f32(iso[i])).to(cond[i].dtype))
        self.last = out
        return self._pack(out)

    @staticmethod
    def _pack(parts):
        return comfy.utils.pack_latents(parts)[0] if len(parts) > 1 else parts[0]


def run_reference(model, video, audio, latent, conds, **kw):
    shapes = [t.shape for t in latent["samples"].unbind()] if getattr(latent["samples"], "is_nested", False) \
        else [latent["samples"].shape]
    ref = OfficialReference(model, video, audio, shapes, **kw)
    ref.set_conds(*conds)
    return sample(ref, model, latent), ref.forwards


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------

def _modality(cfg, stg, blocks, modality, rescale, skip):
    return ModalityGuidance(cfg=cfg, stg=stg, stg_blocks=tuple(sorted(blocks)) if stg else (), modality=modality,
                            rescale=rescale, skip_step=skip)


_blocks = st.sets(st.integers(0, BLOCKS - 1), min_size=1, max_size=2)
modalities = st.builds(_modality, st.sampled_from(CFG), st.sampled_from(STG), _blocks, st.sampled_from(MODALITY),
                       st.sampled_from(RESCALE), st.sampled_from(SKIP))


def random_settings(seed: int):
    rng = random.Random(seed)

    def one():
        return _modality(rng.choice(CFG), rng.choice(STG[2:]), rng.sample(range(BLOCKS), rng.randint(1, 2)),
                         rng.choice(MODALITY), rng.choice(RESCALE), rng.choice(SKIP))
    return one(), one()


def equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------

def test_reference_is_sensitive(model, conds, latents):
    """The comparison tells the departures of issue 13 apart: STG on the video stream is not
    STG on both streams, and a skipping modality's stream off is not that stream computed."""
    lat = latents[True]
    v = _modality(3.0, 1.0, {1}, 1.0, 0.0, 0)
    a = _modality(1.0, 0.0, {1}, 1.0, 0.0, 0)
    ours, _ = run_pack(model, v, a, lat, conds)
    ref, _ = run_reference(model, v, a, lat, conds)
    both, _ = run_reference(model, v, _modality(1.0, 1e-30, {1}, 1.0, 0.0, 0), lat, conds)  # audio stream too
    assert equal(ours, ref) and not equal(ours, both)
    v, a = _modality(3.0, 0.0, (), 1.0, 0.0, 1), _modality(7.0, 0.0, (), 1.0, 0.0, 0)
    ours, _ = run_pack(model, v, a, lat, conds)
    ref, _ = run_reference(model, v, a, lat, conds)
    computed, _ = run_reference(model, v, a, lat, conds, disable_skipping=False)
    assert equal(ours, ref) and not equal(ours, computed)


@hypothesis.settings(max_examples=30, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(video=modalities, audio=modalities, av=st.booleans())
def test_size1_equals_official_reference(model, conds, latents, video, audio, av):
    latent = latents[av]
    ours, run = run_pack(model, video, audio, latent, conds)
    ref, ref_forwards = run_reference(model, video, audio, latent, conds)
    assert all(torch.isfinite(t).all() for t in ours)
    assert equal(ours, ref), (video, audio, av)
    assert sum(run["forwards"].values()) <= ref_forwards


PARALLEL_CASES = [(0, True), (2, False)]  # (settings seed, audio+video latent)
_serial: dict = {}


@pytest.mark.parametrize("size", [2, 3, 4], ids=lambda n: f"{n}ranks")
def test_sizes_2_to_4_equal_size_1(model, conds, latents, size):
    for seed, av in PARALLEL_CASES:
        video, audio = random_settings(seed)
        if (seed, av) not in _serial:
            _serial[(seed, av)] = run_pack(model, video, audio, latents[av], conds)[0]
        parallel, run = run_pack(model, video, audio, latents[av], conds, size=size)
        assert equal(parallel, _serial[(seed, av)]), (size, video, audio, av)
        assert len(run["per_rank"]) == size
