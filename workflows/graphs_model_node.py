"""The CFG Parallel node's example workflows (workflows/build.py renders them with graphs.py's).

The graphs users already have, with one node more: KSampler, and Wan 2.2's two experts
through KSamplerAdvanced, and SDXL with ComfyUI's PerturbedAttentionGuidance (three passes on
three GPUs). Shared names (colours, group titles, prompts) come from graphs.py.
"""
from __future__ import annotations

from build import Graph, load_graphs_module

_g = load_graphs_module()
GUIDANCE, BLUE, GREEN, PURPLE, BROWN = _g.GUIDANCE, _g.BLUE, _g.GREEN, _g.PURPLE, _g.BROWN
POSITIVE_VIDEO, NEGATIVE_VIDEO = _g.POSITIVE_VIDEO, _g.NEGATIVE_VIDEO

# ---------------------------------------------------------------------------------------
# One node in the graphs users already have (CFG Parallel: MODEL -> MODEL)
# ---------------------------------------------------------------------------------------
KSAMPLER_NOTE = """
ADD ONE NODE TO YOUR GRAPH: KSAMPLER ON TWO GPUs

The usual text-to-image graph with one node more: CFG Parallel between the loader and KSampler. Every sampling of that model then runs its two CFG branches (positive and negative) at the same time on two GPUs; the result equals one-GPU sampling bit for bit (and ComfyUI's own CFG up to float rounding: ComfyUI batches both branches in one forward).

Settings
- CFG Parallel: parallel_size 2, devices empty = the first two GPUs (or e.g. cuda:0,cuda:2). Place it after the loader and any LoRA / ModelSampling nodes. The policy input is optional: left empty, the guidance is the sampler's own (its cfg, positive and negative).
- KSampler: any sampler and scheduler; cfg 1 has one branch only (nothing to run in parallel).
- The workers keep the model loaded between prompts.
"""



def sdxl_inputs(g: Graph, prompt: str, width: int, height: int, batch_size: int):
    """Column 1 of the SDXL examples: checkpoint, positive and negative prompt, empty latent."""
    g.column(1).group("Model and prompt", BLUE)
    ckpt = g.node("CheckpointLoaderSimple", title="Load Checkpoint", w=360, ckpt_name="sd_xl_base_1.0.safetensors")
    pos = g.node("CLIPTextEncode", title="Positive prompt", w=360, h=150, clip=ckpt.out("CLIP"), text=prompt)
    neg = g.node("CLIPTextEncode", title="Negative prompt", w=360, h=120, clip=ckpt.out("CLIP"),
                 text="blurry, low quality, watermark, text")
    latent = g.node("EmptyLatentImage", w=360, width=width, height=height, batch_size=batch_size)
    return ckpt, pos, neg, latent


def sample_and_save(g: Graph, model, inputs, prefix: str, *, cfg: float = 7.0, sampler_name: str = "euler",
                    group_decode: dict | None = None) -> None:
    """The SDXL examples' last columns: KSampler (seed 0, 30 steps) below the guidance nodes of
    column 2, then column 3 decodes and saves. ``model``: the CFG Parallel node; ``inputs``:
    sdxl_inputs' nodes. ``group_decode``: VAE Decode (Multi-GPU)'s settings, to decode on the
    worker group instead of with VAE Decode."""
    ckpt, pos, neg, latent = inputs
    g.group("Sampling", PURPLE)
    sample = g.node("KSampler", w=320, model=model.out(), seed=0, steps=30, cfg=cfg, sampler_name=sampler_name,
                    scheduler="normal", positive=pos.out(), negative=neg.out(), latent_image=latent.out(), denoise=1.0)
    if group_decode is None:
        g.column(3).group("Decode and save", BROWN)
        image = g.node("VAEDecode", w=320, samples=sample.out(), vae=ckpt.out("VAE")).out()
    else:
        g.column(3).group("Decode on the group and save", BROWN)
        image = g.node("CFGParallelMultiGPU_VAEDecode", title="VAE Decode (Multi-GPU)", w=320, samples=sample.out(),
                       vae=ckpt.out("VAE"), **group_decode).out()
    g.node("SaveImage", w=320, h=300, images=image, filename_prefix=prefix)


def ksampler_cfg_parallel() -> Graph:
    g = Graph("ksampler_cfg_parallel", "Add one node - KSampler on two GPUs")
    g.column(0).group(None).note(KSAMPLER_NOTE, w=420, h=520)
    inputs = sdxl_inputs(g, "a red fox in fresh snow at golden hour, detailed fur, 85mm photograph", 1024, 1024, 1)
    model = g.column(2).group(GUIDANCE, GREEN).node("CFGParallelMultiGPU_Model", title="CFG Parallel", w=320,
                                                    model=inputs[0].out("MODEL"), parallel_size=2, devices="")
    sample_and_save(g, model, inputs, "cfg_parallel/ksampler")
    return g


FOUR_SEEDS_NOTE = """
FOUR SEEDS AT ONCE: A BATCH OF 4 ON FOUR GPUs

The KSampler graph with batch_size 4 (four images, four seeds' worth of noise from one seed) and CFG Parallel with parallel_size 4 and batch_split auto: the planner makes 2 batch groups x 2 branch ranks, so each GPU runs one branch (positive or negative) of two of the four images. The layout is logged in the console ("cfg-parallel batch split: 2 group(s) of 2 rank(s) for a batch of 4").

Settings
- CFG Parallel: parallel_size 4, devices empty = the first four GPUs, batch_split auto (or 2: two batch groups). Place it after the loader and any LoRA / ModelSampling nodes.
- Empty Latent Image: batch_size 4. KSampler: any sampler and scheduler (euler_ancestral here: its per-step noise is split too).

What you get
- Every image gets exactly the noise and conditioning it gets when the batch is not split (also the noise ancestral and SDE samplers draw at every step).
- Not bit for bit: a batch split changes the batch dimension of the model's matmuls, which rounds differently (measured <= 1.1e-5 max abs per sample on the CPU test model, fp32). batch_split off (the default) keeps every GPU on the whole batch and is bit-exact.
- Previews show the first image (ComfyUI previews the first sample of a batch); the progress bar counts the steps.
- On two GPUs, auto keeps the branch split (one branch per GPU, the same predicted time, exact); 2 forces two batch groups.
"""


def ksampler_four_seeds() -> Graph:
    g = Graph("ksampler_four_seeds", "Four seeds (batch 4) on four GPUs")
    g.column(0).group(None).note(FOUR_SEEDS_NOTE, w=420, h=560)
    inputs = sdxl_inputs(g, "a red fox in fresh snow at golden hour, detailed fur, 85mm photograph", 1024, 1024, 4)
    model = g.column(2).group(GUIDANCE, GREEN).node("CFGParallelMultiGPU_Model", title="CFG Parallel", w=320,
                                                    model=inputs[0].out("MODEL"), parallel_size=4, devices="",
                                                    sequence_split="off", batch_split="auto")
    sample_and_save(g, model, inputs, "cfg_parallel/four_seeds", sampler_name="euler_ancestral")
    return g


GROUP_DECODE_NOTE = """
KSAMPLER AND VAE DECODE ON TWO GPUs

The KSampler example with its decode on the worker group too: VAE Decode (Multi-GPU) decodes the tiles of VAE Decode (Tiled) at the same time on the two workers that sampled, and blends them here in ComfyUI's order. The image equals VAE Decode (Tiled) with the same settings bit for bit (not plain VAE Decode, which decodes in one piece).

Settings
- VAE Decode (Multi-GPU): the same parallel_size and devices as CFG Parallel (one worker group; another size restarts it). tile_size / overlap as in VAE Decode (Tiled); smaller tiles = more tiles to spread.
- The workers keep the VAE loaded between prompts, like the model. ComfyUI's GPU never loads it.
- Worth it for large images and videos (many tiles); for one 1024x1024 image the decode takes about a second anyway.
"""


def ksampler_group_decode() -> Graph:
    g = Graph("ksampler_group_decode", "KSampler and VAE decode on two GPUs")
    g.column(0).group(None).note(GROUP_DECODE_NOTE, w=420, h=560)
    inputs = sdxl_inputs(g, "a lighthouse on a cliff in a storm, waves breaking, dramatic light, wide photograph", 1536, 1024, 1)
    model = g.column(2).group(GUIDANCE, GREEN).node("CFGParallelMultiGPU_Model", title="CFG Parallel", w=320,
                                                    model=inputs[0].out("MODEL"), parallel_size=2, devices="")
    sample_and_save(g, model, inputs, "cfg_parallel/group_decode",
                    group_decode=dict(tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8, parallel_size=2,
                                      devices=""))
    return g


WAN22_NOTE = """
WAN 2.2 TEXT-TO-VIDEO, TWO EXPERTS, EACH ON TWO GPUs

ComfyUI's Wan 2.2 14B template (the variant without the 4-step LoRA) with one CFG Parallel node behind each expert's ModelSamplingSD3: the high-noise expert samples steps 0-10 of 20 and hands its leftover noise to the low-noise expert for steps 10-20. Each sampling runs its positive and negative branch at the same time on two GPUs; the result equals one-GPU sampling bit for bit.

Settings
- The workers hold both experts at once (within CFG_PARALLEL_MODEL_BUDGET_GB, default half the host memory): alternating between them does not reload, in this prompt or the next.
- Both CFG Parallel nodes need the same parallel_size and devices (one worker group).
- With the 4-step LoRA and cfg 1 there is one branch per step: nothing to run in parallel.
"""


def wan22_two_experts() -> Graph:
    g = Graph("wan22_two_experts", "Wan 2.2 two experts (KSamplerAdvanced) on two GPUs")
    g.column(0).group(None).note(WAN22_NOTE, w=420, h=560)
    g.column(1).group("Models and prompt", BLUE)  # as ComfyUI's template "Text to Video (Wan 2.2)"
    clip = g.node("CLIPLoader", w=380, clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default")
    vae = g.node("VAELoader", w=380, vae_name="wan_2.1_vae.safetensors")
    experts = [g.node("UNETLoader", title=f"{n} noise expert", w=380, unet_name=f"wan2.2_t2v_{n.lower()}_noise_14B_fp8"
                      f"_scaled.safetensors", weight_dtype="default") for n in ("High", "Low")]
    pos = g.node("CLIPTextEncode", title="Positive prompt", w=380, h=150, clip=clip.out(), text=POSITIVE_VIDEO)
    neg = g.node("CLIPTextEncode", title="Negative prompt", w=380, h=120, clip=clip.out(), text=NEGATIVE_VIDEO)
    latent = g.node("EmptyHunyuanLatentVideo", w=380, width=1280, height=704, length=81, batch_size=1)
    g.column(2).group(GUIDANCE, GREEN)
    models = []
    for unet in experts:
        shifted = g.node("ModelSamplingSD3", w=320, model=unet.out(), shift=8.0)
        models.append(g.node("CFGParallelMultiGPU_Model", title="CFG Parallel", w=320, model=shifted.out(), parallel_size=2,
                             devices=""))
    g.column(3).group("Sampling: high noise, then low noise", PURPLE)
    common = dict(steps=20, cfg=3.5, sampler_name="euler", scheduler="simple", positive=pos.out(), negative=neg.out())
    high = g.node("KSamplerAdvanced", w=320, model=models[0].out(), add_noise="enable", noise_seed=0,
                  latent_image=latent.out(), start_at_step=0, end_at_step=10, return_with_leftover_noise="enable",
                  **common)
    low = g.node("KSamplerAdvanced", w=320, model=models[1].out(), add_noise="disable", noise_seed=0,
                 latent_image=high.out(), start_at_step=10, end_at_step=10000, return_with_leftover_noise="disable",
                 **common)
    g.column(4).group("Decode and save", BROWN)
    frames = g.node("VAEDecode", w=300, samples=low.out(), vae=vae.out()).out()
    video = g.node("CreateVideo", w=300, h=110, fps=16.0, images=frames)
    g.node("SaveVideo", w=300, video=video.out(), filename_prefix="cfg_parallel/wan22", format="auto", codec="auto")
    return g


PAG_NOTE = """
SDXL WITH PERTURBED-ATTENTION GUIDANCE: THREE PASSES ON THREE GPUs

ComfyUI's own PerturbedAttentionGuidance node in front of CFG Parallel: every step needs three model passes (positive, negative, and PAG's perturbed pass), and with parallel_size 3 each runs on its own GPU at the same time. PAG's own arithmetic combines them, on every GPU: the result equals one-GPU sampling bit for bit, and ComfyUI without the pack up to float rounding.

Settings
- PerturbedAttentionGuidance: scale 3 (0 turns the pass off). SkipLayerGuidanceDiT (DiT models such as Wan) and PerpNeg's empty-prompt pass run as a branch the same way.
- Combine-only nodes (RescaleCFG, CFGZeroStar, APG, ...) can be chained here too: they run on every GPU after the passes.
- CFG Parallel: parallel_size 3, devices empty = the first three GPUs. With 2 GPUs the third pass shares a GPU.
"""


def sdxl_pag_three_gpus() -> Graph:
    g = Graph("sdxl_pag_three_gpus", "SDXL with PAG - three passes on three GPUs")
    g.column(0).group(None).note(PAG_NOTE, w=420, h=520)
    inputs = sdxl_inputs(g, "a lighthouse on a rocky coast in a storm, dramatic clouds, detailed, photograph", 1024, 1024, 1)
    g.column(2).group(GUIDANCE, GREEN)
    pag = g.node("PerturbedAttentionGuidance", w=320, model=inputs[0].out("MODEL"), scale=3.0)
    model = g.node("CFGParallelMultiGPU_Model", title="CFG Parallel", w=320, model=pag.out(), parallel_size=3,
                   devices="")
    sample_and_save(g, model, inputs, "cfg_parallel/sdxl_pag", cfg=6.0)
    return g


def all_graphs() -> list[Graph]:
    return [ksampler_cfg_parallel(), ksampler_four_seeds(), wan22_two_experts(), sdxl_pag_three_gpus(),
            ksampler_group_decode()]
