"""A guided step with ComfyUI's SkipLayerGuidanceDiT or PerturbedAttentionGuidance: size 1 and predicted size 3.

Builds a random-weight model with ComfyUI's own classes on one GPU (``--model wan``: Wan 2.1
1.3B dims, 30 blocks, dim 1536, 832x480x33; ``--model sdxl``: the SDXL UNet, 1024x1024),
patches it with the core node (SLG on block 9 / PAG on the middle block) and runs the pack's
own guided step (``BranchGuider.predict_noise``: cond, negative and the node's pass one after
another on one GPU, then the node's arithmetic) as parallel size 1 runs it. It also times
each of the three forwards alone. The step with the pass on its own GPU (3 ranks, one pass
each) is predicted as the slowest single forward + the measured exchange-free combine (an
all-gather of three latents is added at the link's rate by the reader: a few MB).

    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model wan --reps 10 --out $OUT/slg.json
    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model sdxl --reps 10 --out $OUT/pag.json
    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model wan --tiny --device cpu   # smoke
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WAN = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
           text_dim=4096, out_dim=16, num_heads=12, num_layers=30, window_size=(-1, -1), qk_norm=True,
           cross_attn_norm=True, eps=1e-6)
WAN_TINY = {**WAN, "dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def build(args):
    """(ModelPatcher, latent shape, text context shape) with ComfyUI's classes and random weights."""
    sys.path.insert(0, args.comfy)
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    from comfy.cli_args import args as comfy_args  # noqa: F401 (ComfyUI's defaults)

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    if args.model == "wan":
        config = comfy.supported_models.WAN21_T2V({**(WAN_TINY if args.tiny else WAN), "image_model": "wan2.1"})
        model = comfy.model_base.WAN21(config, device=args.device)
        frames, h, w = (2, 8, 8) if args.tiny else (9, 60, 104)
        latent, context = (1, 16, frames, h, w), (1, 512, 4096)
    else:
        config = comfy.supported_models.SDXL({"model_channels": 320, "use_linear_in_transformer": True,
                                               "transformer_depth": [0, 0, 2, 2, 10, 10], "context_dim": 2048,
                                               "adm_in_channels": 2816, "use_temporal_attention": False})
        model = comfy.model_base.SDXL(config, device=args.device)
        side = 16 if args.tiny else 128
        latent, context = (1, 4, side, side), (1, 77, 2048)
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.manual_cast_dtype = None
    patcher = comfy.model_patcher.ModelPatcher(model, args.device, args.device)
    return patcher, latent, context, dtype


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--model", choices=("wan", "sdxl"), default="wan")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    patcher, latent, context, dtype = build(args)
    sys.path.insert(0, str(REPO))
    import comfy.samplers
    from comfy_extras import nodes_pag, nodes_slg
    from cfg_runtime.adapters.branch_guider import BranchGuider
    from cfg_runtime.guidance.presets import standard_cfg

    if args.model == "wan":
        patched = nodes_slg.SkipLayerGuidanceDiT.execute(patcher, 3.0, 0.0, 1.0, "9" if not args.tiny else "1", "",
                                                         0.0)[0]
    else:
        patched = nodes_pag.PerturbedAttentionGuidance.execute(patcher, 3.0)[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(latent, generator=g).to(args.device)
    conds = [[torch.randn(context, generator=g).to(args.device, dtype), {}] for _ in range(2)]
    if args.model == "sdxl":
        for c in conds:
            c[1]["pooled_output"] = torch.randn(1, 1280, generator=g).to(args.device, dtype)
    guider = BranchGuider(patched, standard_cfg(5.0))
    guider.set_conds(comfy.samplers.convert_cond(conds[0]), comfy.samplers.convert_cond(conds[1]))
    sigmas = torch.tensor([0.9, 0.0], device=args.device)
    guider.inner_model, guider.conds, _ = comfy.sampler_helpers.prepare_sampling(patched, x.shape, guider.conds)
    guider.conds = comfy.samplers.process_conds(guider.inner_model, x, guider.conds, args.device, None, None, 0)
    options = {**patched.model_options, "transformer_options": {**patched.model_options.get(
        "transformer_options", {}), "sample_sigmas": sigmas}}
    t = sigmas[:1]
    with torch.inference_mode():
        step_s, _ = timed(lambda: guider.predict_noise(x, t, options), args.device, args.reps)
        from cfg_runtime.adapters.guidance_passes import extra_passes, record

        passes = extra_passes(options)
        one = {}
        for name, cond in (("cond", "positive"), ("negative", "negative")):
            one[name], _ = timed(lambda c=cond: comfy.samplers.calc_cond_batch(
                guider.inner_model, [guider.conds[c]], x, t, options), args.device, args.reps)
        one[passes[0].name], _ = timed(lambda: record(passes[0], guider.inner_model, guider.conds, 5.0, x, t, options),
                                       args.device, args.reps)
    predicted = max(one.values()) + max(0.0, step_s - sum(one.values()))
    result = {"model": args.model, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": str(dtype), "latent": latent, "step_size1_s": step_s, "forward_s": one,
              "predicted_step_3_ranks_s": predicted, "speedup": step_s / predicted,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
