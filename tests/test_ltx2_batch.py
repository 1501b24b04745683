"""The LTX2 Sampler with a batch split: an audio+video (nested) latent of batch 2 over 2 batch
groups of gloo CPU ranks (tiny LTX-2, ComfyUI 0.29; skipped where ComfyUI has no LTX-2, as
tests/test_ltx2_av.py is).

Each group samples its rows of the video and the audio latents (their noise, their masks);
rank 0 puts both parts together again. One and two stages against parallel size 1 (the batch
dimension of every matmul differs: a measured bound, not bit for bit), two stages with the
sequence split inside each batch group (4 ranks: 2 batch groups x sequence 2), and the refusals.
"""
from __future__ import annotations

import importlib.util
import logging
import sys

import pytest
import torch

from support.paths import COMFYUI_DIR, NEEDS_029, REPO
from support.sampling import one_thread as single_thread, sigmas_for
from support.tiny_ltx2 import ltxav_available

pytestmark = pytest.mark.skipif(
    not ltxav_available(),
    reason=f"{NEEDS_029} LTX-2 audio+video tests need a ComfyUI with LTX-2 (e.g. 0.29); COMFYUI_DIR={COMFYUI_DIR} "
           f"has none.")

if ltxav_available():
    import comfy.samplers  # noqa: E402

    from cfg_runtime.errors import GroupConfigError  # noqa: E402
    from cfg_runtime.group import shutdown_group  # noqa: E402
    from cfg_runtime.guidance.ltx import ModalityGuidance  # noqa: E402
    from cfg_runtime.guidance.presets import ltx2_multimodal  # noqa: E402
    from support import tiny_ltx2 as t2  # noqa: E402

SEED = 7
BOUND = 1e-4  # max |split - size 1| per part (fp32, outputs of magnitude ~1)


def policy(rescale: float = 0.0):
    """cond, negative, STG on block 1, modality-isolated; rescale 0: per sample (splits over a batch)."""
    return ltx2_multimodal(
        ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(1,), modality=3.0, rescale=rescale),
        ModalityGuidance(cfg=7.0, stg=0.5, stg_blocks=(1,), modality=2.0, rescale=rescale))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_ltx2_batch")
    return {"model": t2.build_tiny_ltxav(d / "tiny_ltxav.safetensors", seed=0),
            "vae": t2.build_tiny_ltx_vae(d / "tiny_ltx_vae.safetensors"),
            "upscaler": t2.build_tiny_latent_upscaler(d / "tiny_ltx_upscaler.safetensors"),
            "audio_vae": t2.build_tiny_ltx_audio_vae(d / "tiny_ltx_audio_vae.safetensors")}


@pytest.fixture(scope="module")
def model(files):
    return t2.load_model(files["model"])


@pytest.fixture(scope="module")
def latent(files):
    lat = t2.tiny_av_latent(batch=2, audio_vae=t2.load_ltx_audio_vae(files["audio_vae"]))
    video, audio = lat["samples"].unbind()
    mask_v = torch.ones(2, 1, *video.shape[2:])
    mask_v[1, :, 0] = 0.0  # sample 1 keeps its first latent frame (per-sample mask rows)
    lat["noise_mask"] = type(lat["samples"])([mask_v, torch.ones(2, 1, *audio.shape[2:])])
    return lat


@pytest.fixture(scope="module", autouse=True)
def _threads_and_group():
    with single_thread():  # as every rank (LTX-2's CPU bits depend on the thread count)
        yield
    shutdown_group()


def _node():
    name = "cfgp_pack_under_test"  # the name tests/test_ltx2_av.py loads this checkout under
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name].NODE_CLASS_MAPPINGS["LTX2Sampler"]()


def run(model, latent, *, size=1, split="off", mode="one_stage", pol=None, files=None, sequence="off"):
    extra = {}
    if mode == "two_stage":
        extra = dict(upscale_model=t2.load_latent_upscaler(files["upscaler"]), vae=t2.load_ltx_vae(files["vae"]))
    with torch.inference_mode():
        final, stage1, _ = _node().sample(model, t2.tiny_av_conditioning(1), t2.tiny_av_conditioning(2),
                                       pol or policy(), latent, comfy.samplers.sampler_object("euler"),
                                       sigmas_for(model, 3), SEED, mode, size, "cpu",
                                       "0.909375, 0.725, 0.421875, 0.0", batch_split=split,
                                       sequence_split=sequence, **extra)
    return final["samples"].unbind(), stage1["samples"].unbind()


def compare(label: str, got, ref) -> float:
    worst = 0.0
    for part, g, r in zip(("video", "audio"), got, ref):
        assert g.shape == r.shape and g.shape[0] == 2
        diff = g.double() - r.double()
        worst = max(worst, float(diff.abs().max()))
        print(f"\n{label} {part}: max abs {float(diff.abs().max()):.3g}, "
              f"rel L2 {float(diff.norm() / r.double().norm()):.3g}, bit-exact {torch.equal(g, r)}")
    assert worst <= BOUND
    return worst


def test_one_stage_batch_2_on_2_ranks(model, latent):
    (ref, _), (got, _) = run(model, latent), run(model, latent, size=2, split="2")
    compare("LTX-2 AV one_stage, batch 2 on 2 batch groups vs size 1:", got, ref)
    assert not torch.equal(ref[0][0], ref[0][1])  # two different samples
    kept, free = got[0][1, :, 0], got[0][0, :, 0]  # the mask row of sample 1 keeps its (zero) first frame
    assert kept.abs().max() < 1e-6 < free.abs().max()


def test_two_stage_batch_2_on_2_ranks(model, latent, files):
    ref_final, ref_stage1 = run(model, latent, mode="two_stage", files=files)
    final, stage1 = run(model, latent, size=2, split="2", mode="two_stage", files=files)
    compare("LTX-2 AV two_stage stage 1:", stage1, ref_stage1)
    compare("LTX-2 AV two_stage final:", final, ref_final)


def test_two_stage_batch_2_x_sequence_2_on_4_ranks(model, latent, files, caplog):
    """2 batch groups x (4 branches on 1 branch group x sequence 2) in stage 1, 2 x sequence 2 in
    stage 2: the layout each stage logs says so."""
    ref_final, ref_stage1 = run(model, latent, mode="two_stage", files=files)
    with caplog.at_level(logging.INFO, logger="cfg_parallel"):
        final, stage1 = run(model, latent, size=4, split="2", sequence="2", mode="two_stage", files=files)
    layouts = [r.getMessage() for r in caplog.records if "cfg-parallel batch split:" in r.getMessage()]
    assert len(layouts) == 2, layouts  # stage 1 and stage 2
    assert all(m.startswith("cfg-parallel batch split: 2 batch group(s)") and "sequence degree 2" in m
               for m in layouts), layouts
    compare("LTX-2 AV two_stage, 2 batch groups x sequence 2, stage 1:", stage1, ref_stage1)
    compare("LTX-2 AV two_stage, 2 batch groups x sequence 2, final:", final, ref_final)


def test_refusals(model, latent):
    with pytest.raises(GroupConfigError, match="guidance rescale"):
        run(model, latent, size=2, split="2", pol=policy(rescale=0.7))
    with pytest.raises(GroupConfigError, match="must divide the ranks and be at most the batch"):
        run(model, latent, size=2, split="3")
    one = t2.tiny_av_latent(batch=1)
    with pytest.raises(GroupConfigError, match="latent batch is 1"):
        run(model, one, size=2, split="2")
