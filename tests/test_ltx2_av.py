"""LTX-2 audio+video guidance end to end, on a tiny LTX-2 checkpoint (ComfyUI's LTXAVModel).

Needs a ComfyUI with LTX-2 (0.29: ``comfy/ldm/lightricks/av_model.py``) as COMFYUI_DIR and
a Python that imports it; skipped otherwise (CI runs ComfyUI 0.3.75, which has no LTX-2;
``tests/test_ltx2_sampler_ltxv.py`` covers the LTX-Video path there). Run locally::

    COMFYUI_DIR=/tmp/comfy029 /tmp/venv029/bin/python -m pytest tests/test_ltx2_av.py -q

In process (``Multi-Branch Guider`` runtime and the ``LTX2 Sampler`` node class):
* parallel == serial bit for bit on 1-4 gloo CPU ranks with the full LTX-2 policy (cond,
  negative, STG on a block, modality-isolated; separate video/audio scales; rescale 0.7;
  skip_step > 0, including steps where every modality skips and no forward runs), on the
  packed audio+video latent that LTXVConcatAVLatent makes;
* the serial result equals a hand-written reference guider (ComfyUI's CFGGuider with the
  official formula per modality on the unpacked prediction);
* the same prompt twice gives the same result (also after other prompts; nothing is left
  on the model);
* the LTX2 Sampler node: one- and two-stage (stage 2 checked against the same job built
  from core nodes: LTXVSeparateAVLatent, LTXVLatentUpsampler, LTXVConcatAVLatent,
  CFGGuider at cfg 1).
Through a real 0.29 server (POST /prompt): the LTX2 Sampler one- and two-stage at size 1
and 2 (bit for bit), the same prompt again, and bad inputs becoming node errors.

Not repeated here (tests/test_ltx_branches.py covers them on the same kind of model):
the perturbed pass replaces exactly the chosen blocks' video and audio self-attention
(hook hits per block and module), the modality-isolated pass runs no audio<->video
cross-attention, and both equal hand-made reference modules.

Bit-exactness on the CPU: ComfyUI 0.29's LTX-2 forward gives different float32 bits
with 1 and 2 intra-op threads, and every rank runs with one thread. The in-process
reference therefore runs with one thread too (fixture ``one_thread``), and the server
gets ``OMP_NUM_THREADS=1``.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

from devkit.paths import owned_tempdir
from support.paths import COMFYUI_DIR, NEEDS_029, REPO
from support.sampling import noise_for, one_thread as single_thread, sigmas_for
from support.tiny_ltx2 import ltxav_available

pytestmark = pytest.mark.skipif(
    not ltxav_available(),
    reason=f"{NEEDS_029} LTX-2 audio+video tests need a ComfyUI with LTX-2 (comfy/ldm/lightricks/av_model.py, e.g. 0.29); "
           f"COMFYUI_DIR={COMFYUI_DIR} has none. Run: COMFYUI_DIR=/path/to/comfyui-0.29 <its python> -m pytest "
           f"tests/test_ltx2_av.py")

if ltxav_available():
    import comfy.model_patcher  # noqa: E402
    import comfy.nested_tensor  # noqa: E402
    import comfy.samplers  # noqa: E402
    import comfy.utils  # noqa: E402

    from cfg_runtime.adapters.families import ltx_options as lb  # noqa: E402
    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings  # noqa: E402
    from cfg_runtime.group import shutdown_group  # noqa: E402
    from cfg_runtime.guidance.ltx import ModalityGuidance  # noqa: E402
    from cfg_runtime.guidance.presets import ltx2_multimodal, standard_cfg  # noqa: E402
    from support import tiny_ltx2 as t2  # noqa: E402

STEPS = 6
SEED = 7
MODEL, WAN, VAE, UPSCALER, AUDIO_VAE = ("tiny_ltxav.safetensors", "tiny_wan.safetensors", "tiny_ltx_vae.safetensors",
                                        "tiny_ltx_upscaler.safetensors", "tiny_ltx_audio_vae.safetensors")


def policy(skip_video=1, skip_audio=2, blocks=(1,)):
    """The full LTX-2 policy with separate video/audio parameters. With the default skips
    (video guided on steps 0,2,4; audio on 0,3) steps 1 and 5 run no forward at all."""
    return ltx2_multimodal(
        ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=blocks, modality=3.0, rescale=0.7, skip_step=skip_video),
        ModalityGuidance(cfg=7.0, stg=0.5, stg_blocks=blocks, modality=2.0, rescale=0.7, skip_step=skip_audio))


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_ltx2")
    return {
        "model": t2.build_tiny_ltxav(d / MODEL, seed=0),
        "wan": t2.build_tiny_wan(d / WAN),
        "vae": t2.build_tiny_ltx_vae(d / VAE),
        "upscaler": t2.build_tiny_latent_upscaler(d / UPSCALER),
        "audio_vae": t2.build_tiny_ltx_audio_vae(d / AUDIO_VAE),
    }


@pytest.fixture(scope="module")
def model(files):
    return t2.load_model(files["model"])


@pytest.fixture(scope="module")
def conds():
    return t2.tiny_av_conditioning(1), t2.tiny_av_conditioning(2)


@pytest.fixture(scope="module")
def audio_vae(files):
    return t2.load_ltx_audio_vae(files["audio_vae"])  # core LTXVAudioVAELoader


@pytest.fixture(scope="module")
def latent(audio_vae):
    return t2.tiny_av_latent(audio_vae=audio_vae)  # EmptyLTXVLatentVideo + LTXVEmptyLatentAudio, joined


@pytest.fixture
def one_thread():
    """The ranks run with one intra-op thread; the serial reference must too (see module doc)."""
    with single_thread():
        yield


@pytest.fixture(scope="module", autouse=True)
def _no_group_left():
    yield
    shutdown_group()


def run_guider(model, pol, size, latent, conds, *, one_rank_group=False, steps=STEPS, seed=SEED):
    """One SamplerCustomAdvanced-like run of the Multi-Branch Guider; returns (tensors, what it ran:
    the guider's last_run record)."""
    settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=300, start_timeout_s=300)
    guider = MultiBranchGuider(model, pol, settings)
    guider.set_conds(*conds)
    args = (noise_for(latent, seed), latent["samples"], comfy.samplers.sampler_object("euler"),
            sigmas_for(model, steps))
    with torch.inference_mode():
        if one_rank_group:
            # A world of one rank: the worker path (shipping, rank-side sampling) without peers.
            # ParallelSettings(world_size=1) itself samples in-process, so go through the group directly.
            from cfg_runtime.adapters.sampling.group_sampling import SampleCall, sample_on_group

            call = SampleCall(model, pol, guider.original_conds, *args, None, seed)
            out, result = sample_on_group(call, settings)
            return tuple(out.unbind()), {"ranks": 1, "per_rank": result.summaries}
        out = guider.sample(*args, disable_pbar=True, seed=seed)
    return tuple(out.unbind()), guider.last_run


def equal(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------------------
# the tiny model itself
# --------------------------------------------------------------------------------------

def test_tiny_checkpoint_is_detected_as_ltx2(model):
    assert type(model.model).__name__ == "LTXAV"
    assert lb.model_family(model) == "ltxav" and lb.count_transformer_blocks(model) == 3
    dm = model.model.diffusion_model
    assert dm.transformer_blocks[0].attn1.heads == 2 and dm.audio_inner_dim == 16


def test_latent_is_the_packed_av_latent(latent):
    samples = latent["samples"]
    assert isinstance(samples, comfy.nested_tensor.NestedTensor)
    video, audio = samples.unbind()
    assert tuple(video.shape) == (1, 128, 2, 2, 2) and tuple(audio.shape) == (1, 8, 9, 16)


# --------------------------------------------------------------------------------------
# parallel == serial, and serial == a hand-written reference
# --------------------------------------------------------------------------------------

class HandGuider(comfy.samplers.CFGGuider if ltxav_available() else object):
    """TEST ONLY reference: every pass through ComfyUI's calc_cond_batch, then ltx-core's
    formula per modality on the unpacked prediction, with skip_step reuse."""

    def __init__(self, model, video, audio, shapes):
        super().__init__(model)
        self.params = (video, audio)
        self.shapes = shapes
        self.prev = {}
        self.forwards = 0

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        step = int((sigmas[:-1] - float(timestep[0])).abs().argmin())
        guided = [p.skip_step == 0 or step % (p.skip_step + 1) == 0 for p in self.params]
        preds = {}
        if any(guided):
            video, audio = self.params
            # ltx-pipelines: a modality that skips this step is disabled in every pass of the step
            base = lb.branch_model_options(model_options, run_video=guided[0], run_audio=guided[1])
            opts = {
                "cond": ("positive", base),
                "negative": ("negative", base),
                "perturbed": ("positive", lb.branch_model_options(base, perturb_blocks=video.stg_blocks,
                                                                  perturb_audio_blocks=audio.stg_blocks)),
                "isolated": ("positive", lb.branch_model_options(base, isolate_modalities=True)),
            }
            for name, (which, mo) in opts.items():
                out = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[which]], x, timestep, mo)[0]
                preds[name] = comfy.utils.unpack_latents(out, self.shapes)
                self.forwards += 1
        parts = []
        for i, p in enumerate(self.params):
            if not guided[i]:
                parts.append(self.prev[i])
                continue
            c = preds["cond"][i].float()
            pred = c + (p.cfg - 1.0) * (c - preds["negative"][i].float())
            pred = pred + p.stg * (c - preds["perturbed"][i].float())
            pred = pred + (p.modality - 1.0) * (c - preds["isolated"][i].float())
            pred = pred * (p.rescale * (c.std() / pred.std()) + (1 - p.rescale))
            self.prev[i] = pred
            parts.append(pred)
        return comfy.utils.pack_latents(parts)[0]


def test_serial_equals_hand_reference(model, conds, latent, one_thread):
    pol = policy()
    ours, run = run_guider(model, pol, 1, latent, conds)
    shapes = [t.shape for t in latent["samples"].unbind()]
    hand = HandGuider(model, pol.rule.video, pol.rule.audio, shapes)
    hand.set_conds(*conds)
    with torch.inference_mode():
        ref = hand.sample(noise_for(latent, SEED), latent["samples"], comfy.samplers.sampler_object("euler"),
                          sigmas_for(model, STEPS), disable_pbar=True, seed=SEED).unbind()
    assert all(torch.isfinite(t).all() for t in ours)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # steps 1 and 5 skip both modalities: 4 forwards per branch, 6 evaluations
    assert hand.forwards == 16
    assert run["forwards"] == {"cond": 4, "negative": 4, "perturbed": 4, "isolated": 4}
    assert run["evaluations"] == STEPS
    # and the guidance matters: cond only, or no skipping, gives other latents
    plain, _ = run_guider(model, ltx2_multimodal(ModalityGuidance(), ModalityGuidance()), 1, latent, conds)
    no_skip, _ = run_guider(model, policy(0, 0), 1, latent, conds)
    for other in (plain, no_skip):
        assert not torch.equal(other[0], ours[0]) and not torch.equal(other[1], ours[1])


def test_same_prompt_twice_no_leaks(model, conds, latent, one_thread):
    """Same result for the same prompt, before and after other prompts (other policies,
    conds, latent sizes, a video-only latent) at size 1 and 2; the model keeps no option."""
    options_before = comfy.model_patcher.create_model_options_clone(model.model_options)
    patches_before = dict(model.patches), dict(model.object_patches)
    pol = policy()
    first, _ = run_guider(model, pol, 2, latent, conds)
    run_guider(model, policy(0, 0, blocks=(0, 2)), 2, latent, conds[::-1])
    run_guider(model, pol, 1, t2.tiny_av_latent(length=17), conds)
    quiet = ModalityGuidance(cfg=2.0, stg=1.0, stg_blocks=(2,))
    run_guider(model, ltx2_multimodal(quiet, quiet), 1, t2.tiny_video_latent(), conds)
    assert equal(run_guider(model, pol, 2, latent, conds)[0], first)
    assert equal(run_guider(model, pol, 1, latent, conds)[0], first)
    assert model.model_options == options_before
    assert (dict(model.patches), dict(model.object_patches)) == patches_before
    to = model.model_options.get("transformer_options", {})
    assert lb.BRANCH_KEY not in to and "a2v_cross_attn" not in to


# --------------------------------------------------------------------------------------
# the LTX2 Sampler node in process
# --------------------------------------------------------------------------------------

def _pack():
    """This checkout as a ComfyUI custom-node package (its folder name need not be a module name)."""
    name = "cfgp_pack_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_node(model, conds, latent, *, size=1, mode="one_stage", pol=None, upscale_model=None, vae=None,
             steps=3, seed=SEED, stage2_sigmas="0.909375, 0.725, 0.421875, 0.0"):
    node = _pack().NODE_CLASS_MAPPINGS["LTX2Sampler"]()
    with torch.inference_mode():
        final, stage1, _ = node.sample(model, conds[0], conds[1], pol or policy(0, 0), latent,
                                    comfy.samplers.sampler_object("euler"), sigmas_for(model, steps), seed, mode, size,
                                    "cpu", stage2_sigmas, upscale_model=upscale_model, vae=vae)
    return final, stage1


@pytest.fixture(scope="module")
def two_stage_models(files):
    return t2.load_latent_upscaler(files["upscaler"]), t2.load_ltx_vae(files["vae"])


def test_node_one_stage_size1_and_2(model, conds, latent, one_thread):
    final1, stage1 = run_node(model, conds, latent, size=1)
    assert final1 is stage1 or equal(final1["samples"].unbind(), stage1["samples"].unbind())
    final2, _ = run_node(model, conds, latent, size=2)
    assert equal(final1["samples"].unbind(), final2["samples"].unbind())
    # the node runs exactly what the guider runs
    ref, _ = run_guider(model, policy(0, 0), 1, latent, conds, steps=3)
    assert equal(final1["samples"].unbind(), ref)


def test_node_two_stage_equals_core_nodes_pipeline(model, conds, latent, two_stage_models, one_thread):
    from comfy_extras.nodes_lt import LTXVConcatAVLatent, LTXVSeparateAVLatent
    from comfy_extras.nodes_lt_upsampler import LTXVLatentUpsampler

    upscaler, vae = two_stage_models
    final, stage1 = run_node(model, conds, latent, size=1, mode="two_stage", upscale_model=upscaler, vae=vae)
    one_stage, _ = run_node(model, conds, latent, size=1)
    assert equal(stage1["samples"].unbind(), one_stage["samples"].unbind())
    video, audio = final["samples"].unbind()
    assert tuple(video.shape) == (1, 128, 2, 4, 4) and tuple(audio.shape) == (1, 8, 9, 16)

    with torch.inference_mode():  # the same stage 2 from core nodes
        v, a = LTXVSeparateAVLatent.execute(stage1).args
        up = t2._node_out(LTXVLatentUpsampler.execute(v, upscaler, vae))
        joined = t2._node_out(LTXVConcatAVLatent.execute(up, a))
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(conds[0], conds[1])
        guider.set_cfg(1.0)
        sigmas2 = torch.tensor([0.909375, 0.725, 0.421875, 0.0])
        ref = guider.sample(noise_for(joined, SEED), joined["samples"], comfy.samplers.sampler_object("euler"), sigmas2,
                            disable_pbar=True, seed=SEED).unbind()
    assert equal((video, audio), ref)
    assert not torch.equal(audio, stage1["samples"].unbind()[1])  # stage 2 refined the audio too

    final2, stage1_2 = run_node(model, conds, latent, size=2, mode="two_stage", upscale_model=upscaler, vae=vae)
    assert equal(final2["samples"].unbind(), (video, audio))
    assert equal(stage1_2["samples"].unbind(), stage1["samples"].unbind())


def test_node_errors_in_process(model, conds, latent, files):
    from cfg_runtime.errors import PolicyError

    with pytest.raises(PolicyError, match="needs the upscale_model input"):
        run_node(model, conds, latent, mode="two_stage")
    with pytest.raises(PolicyError, match="out of range"):
        run_node(model, conds, latent, pol=policy(0, 0, blocks=(3,)))
    with pytest.raises(PolicyError, match=r"^Branch 'perturbed' \(audio_stg_blocks\): STG block 3 is out of range: "
                                          r"this model has 3 transformer blocks \(0-2\)$"):
        run_node(model, conds, latent, pol=ltx2_multimodal(ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(1,)),
                                                           ModalityGuidance(cfg=7.0, stg=1.0, stg_blocks=(3,))))
    with pytest.raises(PolicyError, match="video only"):
        run_node(model, conds, t2.tiny_video_latent())
    wan = t2.load_model(files["wan"])
    for pol in (standard_cfg(3.0), policy(0, 0)):  # the node's own requirement comes first, whatever the policy
        with pytest.raises(PolicyError, match=r"^The LTX2 Sampler needs an LTX model .*this model is WAN21"):
            run_node(wan, conds, latent, pol=pol)
    from devkit.tiny_models import build_tiny_ltxv, load_tiny_ltxv, tiny_conditioning

    ltxv = load_tiny_ltxv(build_tiny_ltxv(Path(files["model"]).parent / "tiny_ltxv.safetensors"))
    quiet = ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(1,))
    with pytest.raises(PolicyError, match="audio\\+video, but this model is LTX-Video"):
        run_node(ltxv, (tiny_conditioning(1), tiny_conditioning(2)), latent, pol=ltx2_multimodal(quiet, quiet))


# --------------------------------------------------------------------------------------
# parallel == serial on 1-4 ranks (last of the in-process tests: one group start per size)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [2, 3, 4, 1], ids=lambda n: f"{n}ranks")  # fewest group restarts
def test_parallel_equals_serial_bit_for_bit(model, conds, latent, one_thread, size):
    pol = policy()
    serial, _ = run_guider(model, pol, 1, latent, conds)
    t0 = time.monotonic()
    parallel, run = run_guider(model, pol, size, latent, conds, one_rank_group=size == 1)
    first = time.monotonic() - t0
    assert equal(parallel, serial), f"{size} rank(s) differ from serial"
    per_rank = run["per_rank"]
    assert len(per_rank) == size
    total = {}
    for r in per_rank:
        for name, n in r["forwards"].items():
            total[name] = total.get(name, 0) + n
    assert total == {"cond": 4, "negative": 4, "perturbed": 4, "isolated": 4}  # each branch on one rank only
    assert all(sum(r["forwards"].values()) == 4 * len(r["forwards"]) for r in per_rank)
    # no skipping, and a second prompt on the same (persistent) group
    t0 = time.monotonic()
    again, run = run_guider(model, policy(0, 0), size, latent, conds, one_rank_group=size == 1)
    second = time.monotonic() - t0
    assert equal(again, run_guider(model, policy(0, 0), 1, latent, conds)[0])
    assert not any(r["model_reloaded"] for r in run["per_rank"])
    print(f"\n{size} rank(s): first prompt {first:.1f} s (group start + model), second {second:.2f} s")


# --------------------------------------------------------------------------------------
# through a real ComfyUI 0.29 server
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(files):
    from devkit.comfy_server import ComfyServer

    shutdown_group()  # the in-process group is not needed any more: free the cores
    front_end = owned_tempdir("cfgp_no_frontend_")  # 0.29 exits without its frontend package
    srv = ComfyServer(extra_args=["--front-end-root", front_end], env={"OMP_NUM_THREADS": "1"},
                      startup_timeout=240)
    srv.add_model("diffusion_models", MODEL, files["model"])
    srv.add_model("diffusion_models", WAN, files["wan"])
    srv.add_model("vae", VAE, files["vae"])
    srv.add_model("latent_upscale_models", UPSCALER, files["upscaler"])
    srv.add_model("checkpoints", AUDIO_VAE, files["audio_vae"])
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        Path(front_end).rmdir()


def graph(**kw):
    kw.setdefault("audio_vae", AUDIO_VAE)
    return t2.ltx2_sampler_graph(MODEL, **kw)


def outputs(server, g, timeout=600):
    """Saved latents by SaveLatent node id; with decode, also "frames" (uint8 RGB frames from
    SaveImage) and "audio" (the waveform SaveAudio wrote, read back with av) and its rate."""
    entry = server.run(g, timeout=timeout)
    out = {nid: server.saved_latent(entry, node_id=nid) for nid in ("10", "11", "12") if nid in g}
    if "33" in g:
        import numpy as np
        from PIL import Image

        files = [server.output_dir / i.get("subfolder", "") / i["filename"] for i in entry["outputs"]["33"]["images"]]
        out["frames"] = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
        (item,) = entry["outputs"]["35"]["audio"]
        out["audio"], out["rate"] = _read_audio(server.output_dir / item.get("subfolder", "") / item["filename"])
    return out


def _read_audio(path):
    import av
    import numpy as np

    with av.open(str(path)) as f:
        stream = f.streams.audio[0]
        chunks = [frame.to_ndarray() for frame in f.decode(stream)]
        rate, channels = stream.rate, stream.channels
    data = np.concatenate(chunks, axis=-1)
    return torch.from_numpy(data.reshape(channels, -1) if data.shape[0] != channels else data), rate




@pytest.mark.server
def test_server_one_stage_size1_equals_size2(server):
    """From empty latents (EmptyLTXVLatentVideo, LTXVEmptyLatentAudio of the audio VAE) to decoded
    frames (VAEDecode, SaveImage) and audio (LTXVAudioVAEDecode, SaveAudio); different STG blocks
    per modality and video skip_step 1."""
    kw = dict(video_skip_step=1, video_stg_blocks="1", audio_stg_blocks="0,2", decode=True, vae=VAE)
    t0 = time.monotonic()
    serial = outputs(server, graph(size=1, nonce=1, **kw))
    t1 = time.monotonic()
    parallel = outputs(server, graph(size=2, nonce=2, **kw))
    t2_ = time.monotonic()
    again = outputs(server, graph(size=2, nonce=3, **kw))
    t3 = time.monotonic()
    assert tuple(serial["10"].shape) == (1, 128, 2, 2, 2) and tuple(serial["11"].shape) == (1, 8, 9, 16)
    assert torch.isfinite(serial["10"]).all() and torch.isfinite(serial["11"]).all()
    assert tuple(serial["frames"].shape) == (2, 2, 2, 3) and serial["frames"].float().std() > 0  # frames, H, W, RGB
    assert serial["rate"] == 16000 and serial["audio"].shape[0] == 2 and serial["audio"].shape[1] > 4000
    assert serial["audio"].abs().max() > 0
    for nid in ("10", "11", "12", "frames", "audio"):
        assert torch.equal(parallel[nid], serial[nid]), nid
        assert torch.equal(again[nid], serial[nid]), nid
    print(f"\nserver one-stage: size 1 {t1 - t0:.1f} s, size 2 first {t2_ - t1:.1f} s, again {t3 - t2_:.2f} s")


@pytest.mark.server
def test_server_two_stage_size1_equals_size2(server):
    kw = dict(mode="two_stage", upscaler=UPSCALER, vae=VAE, decode=True)
    serial = outputs(server, graph(size=1, nonce=4, **kw))
    parallel = outputs(server, graph(size=2, nonce=5, **kw))
    one_stage = outputs(server, graph(size=1, nonce=6))
    assert tuple(serial["10"].shape) == (1, 128, 2, 4, 4) and tuple(serial["11"].shape) == (1, 8, 9, 16)
    assert tuple(serial["frames"].shape) == (2, 4, 4, 3) and serial["rate"] == 16000  # the upsampled video, decoded
    for nid in ("10", "11", "12", "frames", "audio"):
        assert torch.equal(parallel[nid], serial[nid]), nid
    assert torch.equal(serial["12"], one_stage["10"])  # stage 1 of the two-stage job == the one-stage job


@pytest.mark.server
def test_server_bad_inputs_become_node_errors(server):
    msg = server.run_failing(t2.ltx2_sampler_graph(WAN, audio_vae=AUDIO_VAE, nonce=7))
    assert msg.startswith("LTX2Sampler: The LTX2 Sampler needs an LTX model") and "WAN21" in msg
    msg = server.run_failing(graph(nonce=8, video_stg_blocks="7", audio_stg_blocks="7"))
    assert "out of range" in msg and "3 transformer blocks" in msg
    msg = server.run_failing(graph(nonce=9, mode="two_stage"))
    assert "upscale_model" in msg
    msg = server.run_failing(graph(nonce=10, mode="two_stage", upscaler=UPSCALER))
    assert "vae" in msg
    msg = server.run_failing(t2.ltx2_sampler_graph(MODEL, nonce=11))  # video-only latent, audio parameters set
    assert "video only" in msg and "LTXVConcatAVLatent" in msg
    # and the server still samples afterwards
    assert torch.isfinite(outputs(server, graph(size=2, nonce=12))["10"]).all()


def batched(g: dict, batch: int, split: str) -> dict:
    """The graph with both empty latents at ``batch`` samples and the LTX2 Sampler's batch_split."""
    g["4"]["inputs"]["batch_size"] = batch
    g["5"]["inputs"]["batch_size"] = batch
    g["9"]["inputs"]["batch_split"] = split
    return g


@pytest.mark.server
def test_server_batch_split_two_stage(server):
    """A batch of 2 through the LTX2 Sampler on a server (POST /prompt): batch_split 2 on 2 ranks
    (one sample per rank, both stages) against the whole batch at size 1, sample by sample within
    the batch split's bound (not bit-exact: a batch of one rounds another way); with the presets'
    guidance rescale (one std over the whole batch) a forced split is refused with what to do."""
    kw = dict(mode="two_stage", upscaler=UPSCALER, vae=VAE, video_rescale=0.0, audio_rescale=0.0)
    whole = outputs(server, batched(graph(size=1, nonce=13, **kw), 2, "off"))
    split = outputs(server, batched(graph(size=2, nonce=14, **kw), 2, "2"))
    assert tuple(whole["10"].shape) == (2, 128, 2, 4, 4) and tuple(whole["11"].shape) == (2, 8, 9, 16)
    assert not torch.equal(whole["10"][0], whole["10"][1])  # two samples, two noises
    for nid in ("10", "11", "12"):
        assert split[nid].shape == whole[nid].shape, nid
        diff = max(float((s - w).abs().max()) for s, w in zip(split[nid], whole[nid]))
        print(f"\nMEASURED LTX2 Sampler batch split on a server, {nid}: max |split - whole| per sample {diff:.3g}")
        assert diff <= 1e-4, (nid, diff)
    msg = server.run_failing(batched(graph(size=2, nonce=15), 2, "2"))  # rescale 0.7, the presets' default
    assert "guidance rescale" in msg and "batch split" in msg.lower(), msg
