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
    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model wan --tiny --device cpu --reps 1   # smoke
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
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.device == "cpu"
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

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
    device = torch.device(args.device)
    patcher = comfy.model_patcher.ModelPatcher(model, device, device)
    return patcher, latent, context, dtype


def run_sampling(patcher, policy, conds, latent, args) -> dict:
    """The pack's size-1 sampling (euler, args.steps steps): wall time per step and the dispatcher's
    per-evaluation forward and combine times."""
    import comfy.samplers
    from cfg_runtime.adapters.sampling.branch_guider import BranchGuider
    from cfg_runtime.parallel.dispatch import BranchDispatcher

    guider = BranchGuider(patcher, policy)
    guider.set_conds(*conds[:len({b.cond for b in policy.branches})])
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", args.steps)
    noise = torch.randn(latent, generator=torch.Generator().manual_seed(0))
    best = None
    for _ in range(args.reps):
        dispatcher = BranchDispatcher(policy)
        _sync(args.device)
        t0 = time.perf_counter()
        guider.sample_with(dispatcher, noise, torch.zeros(latent), sampler, sigmas, disable_pbar=True, seed=0)
        _sync(args.device)
        wall = (time.perf_counter() - t0) / args.steps
        st = dispatcher.stats
        row = {"step_s": wall, "forward_s": st.forward_s / st.evaluations, "combine_s": st.combine_s / st.evaluations,
               "forwards_per_branch": dict(st.forwards)}
        best = row if best is None or row["step_s"] < best["step_s"] else best
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--model", choices=("wan", "sdxl"), default="wan")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.tiny and args.model != "wan":
        ap.error("--tiny builds a tiny Wan only (the SDXL UNet has no tiny variant here)")
    patcher, latent, context, dtype = build(args)
    sys.path.insert(0, str(REPO))
    from comfy_extras import nodes_pag, nodes_slg
    from cfg_runtime.guidance.presets import standard_cfg

    if args.model == "wan":
        node = nodes_slg.SkipLayerGuidanceDiT.execute(patcher, 3.0, 0.0, 1.0, "1" if args.tiny else "9", "", 0.0)
    else:
        node = nodes_pag.PerturbedAttentionGuidance.execute(patcher, 3.0)
    patched = node[0] if isinstance(node, tuple) else node.result[0]
    g = torch.Generator().manual_seed(0)
    conds = []
    for _ in range(2):
        extra = {"pooled_output": torch.randn(1, 1280, generator=g).to(dtype)} if args.model == "sdxl" else {}
        conds.append([[torch.randn(context, generator=g).to(dtype), extra]])
    with torch.inference_mode():
        with_pass = run_sampling(patched, standard_cfg(5.0), conds, latent, args)  # cond, negative, the pass
        one = run_sampling(patcher, standard_cfg(1.0), conds, latent, args)  # one forward per step
    predicted = one["forward_s"] + with_pass["combine_s"]
    result = {"model": args.model, "node": "SkipLayerGuidanceDiT" if args.model == "wan" else "PAG",
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": str(dtype), "latent": latent, "size1": with_pass, "one_forward": one,
              "predicted_step_3_ranks_s": predicted, "predicted_speedup": with_pass["step_s"] / predicted,
              "note": "prediction: one forward + the combine; add the all-gather of 3 latents at the link's rate",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
