"""Batch split on one GPU: per-sample forward time at batch 1, 2, 4, and what a split changes.

Two families built with ComfyUI's own classes, random bf16 weights, full width, a few blocks
(the per-sample time scales with the block count; the batch scaling is what this measures):
Flux (image, 1024x1024) and LTX-Video (video, 768x512x97). For each: the median forward time
at batch 1, 2 and 4 (per sample), and the batch of 4's rows 0:2 / 0:1 against the same rows
run as their own batch (bitwise, max abs, relative L2): the rounding a batch split brings.

    PYTHONPATH=/tmp/site python3 bench/bench_batch_split.py --comfy .device/wt26/comfy029 --out $OUT
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

FLUX = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 2, "depth_single_blocks": 4,
        "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
        "txt_ids_dims": []}
LTXV = {"in_channels": 128, "num_layers": 4, "num_attention_heads": 32, "attention_head_dim": 64,
        "cross_attention_dim": 2048, "caption_channels": 4096}


def build(kind: str, device):
    import comfy.ops

    if kind == "flux":
        from comfy.ldm.flux.model import Flux as cls
        cfg = FLUX
    else:
        from comfy.ldm.lightricks.model import LTXVModel as cls
        cfg = LTXV
    model = cls(**cfg, dtype=torch.bfloat16, device=device, operations=comfy.ops.disable_weight_init)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32).to(p.dtype) * 0.02)
    return model.eval()


def inputs(kind: str, batch: int, device):
    g = torch.Generator(device=device).manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)  # noqa: E731
    t = torch.full((batch,), 0.5, device=device)
    if kind == "flux":
        return dict(x=r(4, 16, 128, 128)[:batch], timestep=t, context=r(4, 256, 4096)[:batch], y=r(4, 768)[:batch],
                    guidance=torch.full((batch,), 3.5, device=device))
    return dict(x=r(4, 128, 13, 16, 24)[:batch], timestep=t, context=r(4, 128, 4096)[:batch], attention_mask=None,
                frame_rate=24)


def forward(model, kw):
    with torch.inference_mode():
        out = model(**kw)
    torch.cuda.synchronize()
    return out


def measure(kind: str, device, reps: int) -> dict:
    model = build(kind, device)
    result = {"per_sample_ms": {}, "split": {}}
    for batch in (1, 2, 4):
        kw = inputs(kind, batch, device)
        for _ in range(2):
            forward(model, kw)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            forward(model, kw)
            times.append(time.perf_counter() - t0)
        result["per_sample_ms"][batch] = round(1000 * statistics.median(times) / batch, 2)
    whole = forward(model, inputs(kind, 4, device)).float()
    for rows in (1, 2):
        part = forward(model, inputs(kind, rows, device)).float()
        ref = whole[:rows]
        result["split"][f"rows 0:{rows} of 4"] = {
            "bitwise": bool(torch.equal(part, ref)), "max_abs": float((part - ref).abs().max()),
            "rel_l2": float((part - ref).norm() / ref.norm()), "max_out": float(ref.abs().max())}
    del model
    torch.cuda.empty_cache()
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.comfy).resolve()))
    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for kind in ("flux", "ltxv"):
        report[kind] = measure(kind, device, args.reps)
        print(kind, json.dumps(report[kind]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "batch_split_bench.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
