"""The example workflows, described once (workflows/build.py writes the API and UI files).

Edit here, then run ``python workflows/build.py``; tests/test_workflows.py fails when a
file on disk differs from what this description gives.
"""
from __future__ import annotations

from build import Graph

from cfg_runtime.guidance.ltx import ModalityGuidance

GUIDANCE = "CFG parallel (this pack)"
GREEN, BLUE, PURPLE, BROWN, GREY = "#8A8", "#3f789e", "#a1309b", "#b06634", "#88A"

# LTX-2 (19B) file names as published by Lightricks; put yours in the loaders.
LTX2_CKPT = "ltx-2-19b-dev.safetensors"
LTX2_TEXT_ENCODER = "gemma_3_12B_it.safetensors"
LTX2_DISTILLED_LORA = "ltx-2-19b-distilled-lora-384.safetensors"
LTX2_UPSCALER = "ltx-2-spatial-upscaler-x2-1.0.safetensors"
STAGE2_SIGMAS = "0.909375, 0.725, 0.421875, 0.0"

POSITIVE_VIDEO = ("A red fox trots through fresh snow at golden hour, its breath visible in the cold air. The camera "
                  "follows at ground level. Soft wind, the crunch of paws on snow, a distant raven calls.")
NEGATIVE_VIDEO = "blurry, low quality, still frame, watermark, text, distorted audio, noise"


# The official LTX-2 guidance values, from their one home in the runtime.
OFFICIAL_VIDEO, OFFICIAL_AUDIO = ModalityGuidance.official("2.0")
STANDARD_DEFAULTS = {"cfg": 4.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0}


def modality_values(d: ModalityGuidance, **overrides) -> dict:
    """The widgets of an LTX-2 Video/Audio Guidance node for the parameters ``d``."""
    values = {"cfg": d.cfg, "stg": d.stg, "stg_blocks": ",".join(str(b) for b in d.stg_blocks),
              "modality": d.modality, "rescale": d.rescale, "skip_step": d.skip_step}
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"LTX-2 guidance nodes have no widget(s) {sorted(unknown)}")
    return {**values, **overrides}


def policy_values(preset: str, **overrides) -> dict:
    """The widgets of the CFGPolicy Builder (CFGParallelMultiGPU_PolicyBuilder) at its defaults."""
    unknown = set(overrides) - set(STANDARD_DEFAULTS)
    if unknown:
        raise KeyError(f"CFGParallelMultiGPU_PolicyBuilder has no widget(s) {sorted(unknown)}")
    return {"preset": preset, **STANDARD_DEFAULTS, **overrides}


def legacy_policy_values(preset: str, **overrides) -> dict:
    """Every widget of the deprecated CFGPolicyBuilder id (all presets on one node)."""
    values = {"preset": preset, **STANDARD_DEFAULTS,
              **{f"video_{k}": v for k, v in modality_values(OFFICIAL_VIDEO).items()},
              **{f"audio_{k}": v for k, v in modality_values(OFFICIAL_AUDIO).items()},
              "custom_branches": "negative:negative:3.0"}
    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"CFGPolicyBuilder has no widget(s) {sorted(unknown)}")
    values.update(overrides)
    return values


def ltx2_policy(g: Graph, video: dict | None = None, audio: dict | None = None, w: int = 340):
    """LTX-2 Video Guidance + LTX-2 Audio Guidance chained into a CFGPolicy Builder (ltx2_multimodal)."""
    v = g.node("CFGParallelMultiGPU_LTX2VideoGuidance", title="LTX-2 Video Guidance", w=w,
               **(video or modality_values(OFFICIAL_VIDEO)))
    a = g.node("CFGParallelMultiGPU_LTX2AudioGuidance", title="LTX-2 Audio Guidance", w=w,
               **(audio or modality_values(OFFICIAL_AUDIO)))
    return g.node("CFGParallelMultiGPU_PolicyBuilder", w=w, **policy_values("ltx2_multimodal"), video=v.out(), audio=a.out())


# ---------------------------------------------------------------------------------------
# 1. Plain CFG, any model
# ---------------------------------------------------------------------------------------
PLAIN_NOTE = """
PLAIN CFG ON TWO GPUs (any model)

What it does: the two CFG branches (cond and negative) of every sampling step run at the same time, one per GPU, on a persistent worker group; every rank combines them with the serial CFG formula, so the result equals one-GPU sampling.

Hardware: 2 GPUs, each able to hold the whole diffusion model (each worker keeps a replica on its GPU; the host keeps one shared copy of the weights). One GPU: set parallel_size to 1 (no extra copy; same result as ComfyUI's own CFG).

Settings
- Load Checkpoint: pick your model (SD 1.5, SDXL, SD3, ...).
- CFGPolicy Builder: preset standard_cfg, cfg 7. guidance_rescale and CFG-Zero* are optional. With cfg 1 (e.g. Flux dev) there is only one branch and nothing to parallelise.
- Multi-Branch Guider: parallel_size 2 (one rank per branch); devices empty = the first two GPUs (or write e.g. cuda:0,cuda:2); plan cost_balanced; keep_model_loaded keeps the replicas between prompts, so the next prompt starts without reloading; step_timeout_s fails the job and restarts the workers if a step hangs.
- SamplerCustomAdvanced: any sampler and scheduler.
- Preview as Text shows the branches the policy runs.

Speed: close to 2x per step when one forward fills a GPU (large models, large images); small jobs gain less.
"""


def plain_cfg() -> Graph:
    g = Graph("plain_cfg", "Plain CFG on two GPUs (any model)")
    g.column(0).group(None)
    g.note(PLAIN_NOTE, w=420, h=720)

    g.column(1).group("Model and prompt", BLUE)
    ckpt = g.node("CheckpointLoaderSimple", title="Load Checkpoint", w=360, ckpt_name="sd_xl_base_1.0.safetensors")
    pos = g.node("CLIPTextEncode", title="Positive prompt", w=360, h=150, clip=ckpt.out("CLIP"),
                 text="a red fox in fresh snow at golden hour, detailed fur, 85mm photograph")
    neg = g.node("CLIPTextEncode", title="Negative prompt", w=360, h=120, clip=ckpt.out("CLIP"),
                 text="blurry, low quality, watermark, text")
    g.group("Latent and noise", GREY)
    latent = g.node("EmptyLatentImage", w=360, width=1024, height=1024, batch_size=1)
    noise = g.node("RandomNoise", w=360, noise_seed=0)

    g.column(2).group(GUIDANCE, GREEN)
    policy = g.node("CFGParallelMultiGPU_PolicyBuilder", w=340, **policy_values("standard_cfg", cfg=7.0))
    guider = g.node("CFGParallelMultiGPU_MultiBranchGuider", w=340, model=ckpt.out("MODEL"), positive=pos.out(), negative=neg.out(),
                    policy=policy.out("policy"), parallel_size=2, devices="", plan="cost_balanced",
                    keep_model_loaded=True, step_timeout_s=600.0)
    g.node("PreviewAny", title="Branches of the policy", w=340, h=140, source=policy.out("branches"))

    g.column(3).group("Sampling", PURPLE)
    sampler = g.node("KSamplerSelect", w=320, sampler_name="euler")
    sigmas = g.node("BasicScheduler", w=320, model=ckpt.out("MODEL"), scheduler="normal", steps=30, denoise=1.0)
    sample = g.node("SamplerCustomAdvanced", w=320, noise=noise.out(), guider=guider.out(), sampler=sampler.out(),
                    sigmas=sigmas.out(), latent_image=latent.out())
    g.group("Decode and save", BROWN)
    image = g.node("VAEDecode", w=320, samples=sample.out("output"), vae=ckpt.out("VAE"))
    g.node("SaveImage", w=320, h=300, images=image.out(), filename_prefix="cfg_parallel/plain_cfg")
    return g


# ---------------------------------------------------------------------------------------
# LTX-2 shared pieces
# ---------------------------------------------------------------------------------------
def _ltx2_inputs(g: Graph, frames: int = 121, fps: float = 24.0, width: int = 768, height: int = 512):
    """Loaders, prompts and the empty audio+video latent (columns 1 and 2)."""
    g.column(1).group("Models (LTX-2)", BLUE)
    ckpt = g.node("CheckpointLoaderSimple", title="Load LTX-2 checkpoint", w=360, ckpt_name=LTX2_CKPT)
    te = g.node("LTXAVTextEncoderLoader", title="Gemma text encoder", w=360, text_encoder=LTX2_TEXT_ENCODER,
                ckpt_name=LTX2_CKPT, device="default")
    audio_vae = g.node("LTXVAudioVAELoader", title="Audio VAE", w=360, ckpt_name=LTX2_CKPT)
    g.group("Prompt", BLUE)
    pos = g.node("CLIPTextEncode", title="Positive prompt", w=360, h=170, clip=te.out(), text=POSITIVE_VIDEO)
    neg = g.node("CLIPTextEncode", title="Negative prompt", w=360, h=120, clip=te.out(), text=NEGATIVE_VIDEO)
    cond = g.node("LTXVConditioning", w=360, positive=pos.out(), negative=neg.out(), frame_rate=fps)

    g.column(2).group("Audio + video latent", GREY)
    video = g.node("EmptyLTXVLatentVideo", w=320, width=width, height=height, length=frames, batch_size=1)
    audio = g.node("LTXVEmptyLatentAudio", w=320, frames_number=frames, frame_rate=fps, batch_size=1,
                   audio_vae=audio_vae.out())
    av = g.node("LTXVConcatAVLatent", w=320, video_latent=video.out(), audio_latent=audio.out())
    g.group("Sampler and sigmas", PURPLE)
    sampler = g.node("KSamplerSelect", w=320, sampler_name="euler")
    sigmas = g.node("LTXVScheduler", w=320, steps=40, max_shift=2.05, base_shift=0.95, stretch=True, terminal=0.1,
                    latent=video.out())
    return ckpt, audio_vae, cond, av, sampler, sigmas


def _ltx2_outputs(g: Graph, av_latent, ckpt, audio_vae, fps: float, prefix: str, column: int):
    g.column(column).group("Decode and save", BROWN)
    split = g.node("LTXVSeparateAVLatent", w=320, av_latent=av_latent)
    frames = g.node("VAEDecodeTiled", w=320, samples=split.out("video_latent"), vae=ckpt.out("VAE"),
                    tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8)
    sound = g.node("LTXVAudioVAEDecode", w=320, samples=split.out("audio_latent"), audio_vae=audio_vae.out())
    video = g.node("CreateVideo", w=320, h=110, images=frames.out(), fps=fps, audio=sound.out())
    g.node("SaveVideo", w=320, h=320, video=video.out(), filename_prefix=prefix, format="auto", codec="auto")


def _ltx2_decoded_outputs(g: Graph, ltx, audio_vae, fps: float, prefix: str, column: int):
    """The LTX2 Sampler decoded the video on the group (its images); the audio latent goes to the audio VAE."""
    g.column(column).group("Audio decode and save", BROWN)
    split = g.node("LTXVSeparateAVLatent", w=320, av_latent=ltx.out("latent"))
    sound = g.node("LTXVAudioVAEDecode", w=320, samples=split.out("audio_latent"), audio_vae=audio_vae.out())
    video = g.node("CreateVideo", w=320, h=110, images=ltx.out("images"), fps=fps, audio=sound.out())
    g.node("SaveVideo", w=320, h=320, video=video.out(), filename_prefix=prefix, format="auto", codec="auto")


LTX2_REQUIREMENTS = """
Needs a ComfyUI with LTX-2 (audio+video) support, e.g. 0.29: the LTXV audio nodes (LTXVEmptyLatentAudio, LTXVConcatAVLatent, LTXVSeparateAVLatent, LTXAVTextEncoderLoader, LTXVAudioVAELoader, LTXVAudioVAEDecode) are core nodes there.
Files: models/checkpoints/{ckpt} (video and audio VAE inside), models/text_encoders/{te}.
""".format(ckpt=LTX2_CKPT, te=LTX2_TEXT_ENCODER)

LTX2_POLICY = """
- CFGPolicy Builder, preset ltx2_multimodal, official LTX-2 defaults computed per modality: video cfg 3 / audio cfg 7, STG 1 on block 29 (LTX-2.3: 28), modality scale 3, rescale 0.7, skip_step 0. Setting a scale to its neutral value (cfg 1, stg 0, modality 1) removes that branch. Preview as Text lists the branches.
"""

ONE_STAGE_NOTE = """
LTX-2 ONE STAGE, MULTIMODAL GUIDANCE ON FOUR GPUs

What it does: each of the 40 steps needs four passes of the 19B model: cond, negative (CFG), STG-perturbed and modality-isolated. The Multi-Branch Guider runs them at the same time, one per GPU, and every rank combines them with the official LTX-2 formula, so the result equals one-GPU sampling.
""" + LTX2_REQUIREMENTS + """
Hardware: 4 GPUs that each hold the model (about 40 GB of bf16 weights plus activations: 80 GB-class GPUs, or an fp8 checkpoint on smaller ones). 2 GPUs: parallel_size 2 (two passes each; cost_balanced pairs the cheaper modality pass with another). 1 GPU: parallel_size 1 (serial, no extra copy).

Settings
""" + LTX2_POLICY + """- Multi-Branch Guider: parallel_size 4; devices empty = the first four GPUs; keep_model_loaded keeps the replicas for the next prompt.
- 768x512, 121 frames at 24 fps; LTXVScheduler 40 steps (LTX-2.3: 30), euler.
- For full resolution (stage 2 at 1536x1024) use the two-stage workflow with the LTX2 Sampler.
"""

TWO_STAGE_NOTE = """
LTX-2 TWO STAGE IN ONE NODE (LTX2 Sampler)

What it does: stage 1 samples at 768x512 with the four-pass multimodal guidance in parallel on the worker group; the video latent is upsampled x2 with the spatial upscaler (the audio latent is kept) and stage 2 refines at 1536x1024 with the distilled LoRA and the distilled sigmas (cond only). Both stages run on the worker group, so ComfyUI itself loads no extra copy of the model.
""" + LTX2_REQUIREMENTS + """Also: models/loras/{lora}, models/latent_upscale_models/{up}.

Hardware: 4 GPUs that each hold the model (80 GB-class, or fp8 checkpoints). Stage 1 uses all four; stage 2 has a single branch, so it runs on one GPU while the others wait (it is about a tenth of the job).

Settings
""".format(lora=LTX2_DISTILLED_LORA, up=LTX2_UPSCALER) + LTX2_POLICY + """- LTX2 Sampler: mode two_stage (one_stage = stage 1 only); parallel_size 4, devices empty = the first four GPUs; stage2_sigmas {s}; stage2_model = the model with the distilled LoRA (strength 1); upscale_model and vae feed the latent upsampler.
- decode on: the sampler also decodes the final video with the vae, as VAE Decode (Tiled) with its tile settings would (the same frames, bit for bit), the tiles spread over the four GPUs; its images output feeds Create Video. The audio latent still goes through LTXVSeparateAVLatent and the audio VAE decode. Set decode off and put VAE Decode (Tiled) or VAE Decode (Multi-GPU) after the latent output to decode elsewhere.
- Stage 1: 768x512, 121 frames at 24 fps, LTXVScheduler 40 steps (LTX-2.3: 30), euler; the same sampler runs stage 2.
""".format(s=STAGE2_SIGMAS)


def ltx2_one_stage() -> Graph:
    g = Graph("ltx2_one_stage", "LTX-2 one stage on four GPUs (multimodal guidance)")
    g.column(0).group(None)
    g.note(ONE_STAGE_NOTE, w=440, h=900)
    ckpt, audio_vae, cond, av, sampler, sigmas = _ltx2_inputs(g)
    g.group("Noise", GREY)
    noise = g.node("RandomNoise", w=320, noise_seed=0)

    g.column(3).group(GUIDANCE, GREEN)
    policy = ltx2_policy(g)
    guider = g.node("CFGParallelMultiGPU_MultiBranchGuider", w=340, model=ckpt.out("MODEL"), positive=cond.out("positive"),
                    negative=cond.out("negative"), policy=policy.out("policy"), parallel_size=4, devices="",
                    plan="cost_balanced", keep_model_loaded=True, step_timeout_s=600.0)
    g.node("PreviewAny", title="Branches of the policy", w=340, h=140, source=policy.out("branches"))
    g.group("Sampling", PURPLE)
    sample = g.node("SamplerCustomAdvanced", w=340, noise=noise.out(), guider=guider.out(), sampler=sampler.out(),
                    sigmas=sigmas.out(), latent_image=av.out())

    _ltx2_outputs(g, sample.out("output"), ckpt, audio_vae, 24.0, "cfg_parallel/ltx2_one_stage", column=4)
    return g


def ltx2_two_stage() -> Graph:
    g = Graph("ltx2_two_stage", "LTX-2 two stage on four GPUs (LTX2 Sampler)")
    g.column(0).group(None)
    g.note(TWO_STAGE_NOTE, w=440, h=1060)
    ckpt, audio_vae, cond, av, sampler, sigmas = _ltx2_inputs(g)
    g.group("Stage 2 models", BLUE)
    stage2 = g.node("LoraLoaderModelOnly", title="Distilled LoRA (stage 2)", w=320, model=ckpt.out("MODEL"),
                    lora_name=LTX2_DISTILLED_LORA, strength_model=1.0)
    upscaler = g.node("LatentUpscaleModelLoader", title="Spatial upscaler x2", w=320, model_name=LTX2_UPSCALER)

    g.column(3).group(GUIDANCE, GREEN)
    policy = ltx2_policy(g)
    g.node("PreviewAny", title="Branches of the policy", w=340, h=140, source=policy.out("branches"))
    ltx = g.node("CFGParallelMultiGPU_LTX2Sampler", w=340, model=ckpt.out("MODEL"), positive=cond.out("positive"),
                 negative=cond.out("negative"), policy=policy.out("policy"), latent=av.out(), sampler=sampler.out(),
                 sigmas=sigmas.out(), noise_seed=0, mode="two_stage", parallel_size=4, devices="",
                 stage2_sigmas=STAGE2_SIGMAS, stage2_model=stage2.out(), upscale_model=upscaler.out(),
                 vae=ckpt.out("VAE"), sequence_split="off", batch_split="off",
                 decode="on", tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8)

    _ltx2_decoded_outputs(g, ltx, audio_vae, 24.0, "cfg_parallel/ltx2_two_stage", column=4)
    return g


# ---------------------------------------------------------------------------------------
# 4. The tiny demo (README's main command posts workflows/api/tiny_demo.json)
# ---------------------------------------------------------------------------------------
TINY_NOTE = """
TINY DEMO (runs on a CPU)

The README's demo command sends the API version of this graph (workflows/api/tiny_demo.json) to ComfyUI with POST /prompt.

It needs what the project's test suite provides: a 2-layer LTX-Video model (models/diffusion_models/tiny_ltxv.safetensors, built by devkit/tiny_models.py) and the test-only node CFGP Test Conditioning (devkit/comfy_test_nodes: random text embeddings, since no text encoder is tiny). In a normal ComfyUI those two show up as missing.

Settings
- CFGPolicy Builder: ltx2_multimodal with STG on block 1 of the tiny model, modality 1 (LTX-Video has no audio) and rescale 0.7: three branches per step (cond, negative, STG-perturbed).
- Multi-Branch Guider: parallel_size 2 with devices empty: two worker processes, on the first two GPUs, or on the CPU (gloo) when there is no GPU. Three branches on two ranks: cost_balanced puts two on one rank.
- 6 steps, euler, simple schedule, seed 42; 64x64, 9 frames.
- Output: a latent file (SaveLatent) under output/latents/.
"""


def tiny_demo() -> Graph:
    # Node ids and values are those of the README demo (workflows/api/tiny_demo.json): keep them.
    g = Graph("tiny_demo", "Tiny demo (CPU, test models)", example=False)
    g.column(0).group(None)
    g.note(TINY_NOTE, id=13, w=400, h=640)

    g.column(1).group("Tiny model, random prompts", BLUE)
    unet = g.node("UNETLoader", id=1, title="Tiny LTX-Video model", w=320, unet_name="tiny_ltxv.safetensors",
                  weight_dtype="default")
    pos = g.node("CFGPTestConditioning", id=2, title="Positive (random)", w=320, seed=1, tokens=8, channels=32,
                 nonce=0)
    neg = g.node("CFGPTestConditioning", id=3, title="Negative (random)", w=320, seed=2, tokens=8, channels=32,
                 nonce=0)
    g.group("Latent and noise", GREY)
    latent = g.node("EmptyLTXVLatentVideo", id=4, w=320, width=64, height=64, length=9, batch_size=1)
    noise = g.node("RandomNoise", id=5, w=320, noise_seed=42)

    g.column(2).group(GUIDANCE, GREEN)
    policy = g.node("CFGPolicyBuilder", id=12, w=340, **legacy_policy_values(
        "ltx2_multimodal", cfg=3.0, video_stg_blocks="1", video_modality=1.0, audio_cfg=3.0, audio_stg_blocks="1",
        audio_modality=1.0, custom_branches="negative:negative:2.0"))
    guider = g.node("MultiBranchGuider", id=7, w=340, model=unet.out(), positive=pos.out(), negative=neg.out(),
                    policy=policy.out("policy"), parallel_size=2, devices="", plan="cost_balanced",
                    keep_model_loaded=True, step_timeout_s=600.0)

    g.column(3).group("Sampling", PURPLE)
    sampler = g.node("KSamplerSelect", id=6, w=300, sampler_name="euler")
    sigmas = g.node("BasicScheduler", id=8, w=300, model=unet.out(), scheduler="simple", steps=6, denoise=1.0)
    sample = g.node("SamplerCustomAdvanced", id=9, w=300, noise=noise.out(), guider=guider.out(),
                    sampler=sampler.out(), sigmas=sigmas.out(), latent_image=latent.out())
    g.group("Save", BROWN)
    g.node("SaveLatent", id=10, w=300, samples=sample.out("output"), filename_prefix="latents/cfg_parallel_demo")
    return g


TINY_LTX2_NOTE = """
TINY LTX-2 AUDIO+VIDEO DEMO (runs on a CPU, ComfyUI 0.29 or later)

The LTX-2 counterpart of the tiny demo, for tests: the four LTX-2 guidance passes of every step on two worker ranks, through the LTX2 Sampler, on a 3-block LTX-2 audio+video model.

It needs what the project's test suite provides: models/diffusion_models/tiny_ltxav.safetensors and models/checkpoints/tiny_ltx_audio_vae.safetensors (tests/support/tiny_ltx2.py) and the test-only node CFGP Test Conditioning. In a normal ComfyUI those show up as missing.

Settings
- CFGPolicy Builder: ltx2_multimodal at the official scales, STG on block 1 of the tiny model: cond, negative, perturbed and modality-isolated passes.
- LTX2 Sampler: one_stage, parallel_size 2, devices empty (two GPUs, or two CPU ranks with gloo).
- 3 steps, euler, simple schedule, seed 42; 64x64, 9 frames.
- Output: the video and the audio latent (SaveLatent) under output/latents/.
"""


def tiny_ltx2_demo() -> Graph:
    g = Graph("tiny_ltx2_demo", "Tiny LTX-2 audio+video demo (CPU, test models)", example=False)
    g.column(0).group(None)
    g.note(TINY_LTX2_NOTE, w=400, h=640)

    g.column(1).group("Tiny model, random prompts", BLUE)
    unet = g.node("UNETLoader", title="Tiny LTX-2 model", w=320, unet_name="tiny_ltxav.safetensors",
                  weight_dtype="default")
    pos = g.node("CFGPTestConditioning", title="Positive (random)", w=320, seed=1, tokens=8, channels=64, nonce=0)
    neg = g.node("CFGPTestConditioning", title="Negative (random)", w=320, seed=2, tokens=8, channels=64, nonce=0)
    g.group("Audio+video latent", GREY)
    video = g.node("EmptyLTXVLatentVideo", w=320, width=64, height=64, length=9, batch_size=1)
    audio_vae = g.node("LTXVAudioVAELoader", title="Tiny audio VAE", w=320, ckpt_name="tiny_ltx_audio_vae.safetensors")
    audio = g.node("LTXVEmptyLatentAudio", w=320, frames_number=9, frame_rate=25, batch_size=1,
                   audio_vae=audio_vae.out())
    av = g.node("LTXVConcatAVLatent", w=320, video_latent=video.out(), audio_latent=audio.out())

    g.column(2).group(GUIDANCE, GREEN)
    policy = ltx2_policy(g, video=modality_values(OFFICIAL_VIDEO, stg_blocks="1"),
                         audio=modality_values(OFFICIAL_AUDIO, stg_blocks="1"))
    sampler = g.node("KSamplerSelect", w=340, sampler_name="euler")
    sigmas = g.node("BasicScheduler", w=340, model=unet.out(), scheduler="simple", steps=3, denoise=1.0)
    sample = g.node("CFGParallelMultiGPU_LTX2Sampler", w=340, model=unet.out(), positive=pos.out(), negative=neg.out(),
                    policy=policy.out("policy"), latent=av.out(), sampler=sampler.out(), sigmas=sigmas.out(),
                    noise_seed=42, mode="one_stage", parallel_size=2, devices="", stage2_sigmas=STAGE2_SIGMAS)

    g.column(3).group("Save", BROWN)
    split = g.node("LTXVSeparateAVLatent", w=300, av_latent=sample.out("latent"))
    g.node("SaveLatent", title="Save video latent", w=300, samples=split.out("video_latent"),
           filename_prefix="latents/cfg_parallel_ltx2_video")
    g.node("SaveLatent", title="Save audio latent", w=300, samples=split.out("audio_latent"),
           filename_prefix="latents/cfg_parallel_ltx2_audio")
    return g


TINY_STATUS_NOTE = """
TINY PARALLEL PROMPT WITH THE GROUP STATUS (runs on a CPU)

Plain CFG (cond + negative) on two worker ranks with the pack's current node ids, then the CFG Parallel Group Status in the same prompt: its 'after' input takes the sampler's latent, so it reports the job just run, and its timeline output (one row per rank: forward per branch, idle, exchange per step) is saved as an image.

It needs what the project's test suite provides: the 2-layer LTX-Video model (models/diffusion_models/tiny_ltxv.safetensors) and the test-only node CFGP Test Conditioning. In a normal ComfyUI those show up as missing.

Settings
- CFGPolicy Builder: standard_cfg, cfg 3: two branches per step (cond, negative).
- Multi-Branch Guider: parallel_size 2, devices empty: two GPUs, or two CPU ranks (gloo) without GPUs; one branch per rank.
- 4 steps, euler, simple schedule, seed 7; 64x64, 9 frames.
- Output: the latent (SaveLatent) and the timeline picture (SaveImage) under output/cfg_parallel/.
"""


def tiny_status_demo() -> Graph:
    g = Graph("tiny_status_demo", "Tiny parallel prompt with the Group Status (CPU, test models)", example=False)
    g.column(0).group(None)
    g.note(TINY_STATUS_NOTE, w=400, h=640)

    g.column(1).group("Tiny model, random prompts", BLUE)
    unet = g.node("UNETLoader", title="Tiny LTX-Video model", w=320, unet_name="tiny_ltxv.safetensors",
                  weight_dtype="default")
    pos = g.node("CFGPTestConditioning", title="Positive (random)", w=320, seed=1, tokens=8, channels=32, nonce=0)
    neg = g.node("CFGPTestConditioning", title="Negative (random)", w=320, seed=2, tokens=8, channels=32, nonce=0)
    g.group("Latent and noise", GREY)
    latent = g.node("EmptyLTXVLatentVideo", w=320, width=64, height=64, length=9, batch_size=1)
    noise = g.node("RandomNoise", w=320, noise_seed=7)

    g.column(2).group(GUIDANCE, GREEN)
    policy = g.node("CFGParallelMultiGPU_PolicyBuilder", w=340, **policy_values("standard_cfg", cfg=3.0))
    guider = g.node("CFGParallelMultiGPU_MultiBranchGuider", w=340, model=unet.out(), positive=pos.out(), negative=neg.out(),
                    policy=policy.out("policy"), parallel_size=2, devices="", plan="cost_balanced",
                    keep_model_loaded=True, step_timeout_s=600.0)
    g.group("Sampling", PURPLE)
    sampler = g.node("KSamplerSelect", w=340, sampler_name="euler")
    sigmas = g.node("BasicScheduler", w=340, model=unet.out(), scheduler="simple", steps=4, denoise=1.0)
    sample = g.node("SamplerCustomAdvanced", w=340, noise=noise.out(), guider=guider.out(), sampler=sampler.out(),
                    sigmas=sigmas.out(), latent_image=latent.out())

    g.column(3).group("Status and save", BROWN)
    g.node("SaveLatent", w=460, samples=sample.out("output"), filename_prefix="cfg_parallel/tiny_status_demo")
    status = g.node("CFGParallelMultiGPU_GroupStatus", w=460, h=520, shutdown=False, after=sample.out("output"))
    g.node("SaveImage", title="Save the timeline", w=460, h=260, images=status.out("timeline"),
           filename_prefix="cfg_parallel/group_timeline")
    return g


def all_graphs() -> list[Graph]:
    return [plain_cfg(), ltx2_one_stage(), ltx2_two_stage(), tiny_demo(), tiny_ltx2_demo(), tiny_status_demo()]
