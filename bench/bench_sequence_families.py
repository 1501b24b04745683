"""Split against unsplit for each family at full block width and its usual size, bf16, two gloo
ranks sharing one GPU: one evaluation whole on rank 0, the same split over 2 ranks (this pack's
family layer); reports relative L2, max abs difference and whether the bits are identical.

ComfyUI 0.29's own classes, ``--blocks`` blocks of full width, random bf16 weights N(0, 0.02):
Wan 14B (5120 wide, 40 heads, 832x480x81: 32760 video tokens, 512 text), Flux dev (3072 wide,
24 heads, 1024x1024: 4096 image tokens, 512 text; double and single blocks), Qwen-Image
(3072 wide, 24 heads, 1328x1328: 6889 image tokens, 256 text).

    python bench/bench_sequence_families.py --comfy .device/comfy029 --out $OUT
    python bench/bench_sequence_families.py --comfy .cache/comfyui-0.29 --device cpu --tiny   # dry run
"""
from __future__ import annotations

import argparse
import json
import os
import queue as queue_module
import sys
import time

import torch

FULL = {
    "wan": dict(width=5120, heads=40, latent=(1, 16, 21, 60, 104), text=(512, 4096)),
    "flux": dict(width=3072, heads=24, latent=(1, 16, 128, 128), text=(512, 4096)),
    "qwen_image": dict(width=3072, heads=24, latent=(1, 16, 1, 166, 166), text=(256, 3584)),
}
TINY = {
    "wan": dict(width=128, heads=4, latent=(1, 16, 2, 4, 6), text=(8, 32)),
    "flux": dict(width=128, heads=4, latent=(1, 16, 6, 8), text=(8, 32)),
    "qwen_image": dict(width=128, heads=4, latent=(1, 16, 1, 6, 8), text=(8, 32)),
}


def build(family: str, dims: dict, blocks: int, device: str):
    import comfy.ops

    kw = dict(dtype=torch.bfloat16, device=device, operations=comfy.ops.disable_weight_init)
    w, h, text = dims["width"], dims["heads"], dims["text"][1]
    if family == "wan":
        from comfy.ldm.wan.model import WanModel
        model = WanModel(model_type="t2v", dim=w, ffn_dim=w * 27 // 10, num_heads=h, num_layers=blocks,
                         text_dim=text, **kw)
    elif family == "flux":
        from comfy.ldm.flux.model import Flux
        d = w // h
        model = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=text,
                     hidden_size=w, mlp_ratio=4.0, num_heads=h, depth=blocks, depth_single_blocks=blocks,
                     axes_dim=[d // 8, 7 * d // 16, 7 * d // 16], theta=10000, patch_size=2, qkv_bias=True,
                     guidance_embed=True, txt_ids_dims=[], **kw)
    else:
        from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
        d = w // h
        model = QwenImageTransformer2DModel(num_layers=blocks, attention_head_dim=d, num_attention_heads=h,
                                            joint_attention_dim=text, axes_dims_rope=(d // 8, 7 * d // 16,
                                                                                      7 * d // 16), **kw)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def inputs(family: str, dims: dict, device: str) -> dict:
    gen = torch.Generator(device).manual_seed(1)
    latent = dims["latent"]
    x = torch.randn(*latent, generator=gen, device=device, dtype=torch.bfloat16)
    context = torch.randn(1, *dims["text"], generator=gen, device=device, dtype=torch.bfloat16)
    call = {"x": x, "context": context}
    if family == "wan":
        call["timestep"] = torch.tensor([700.0], device=device)
    else:
        call["timestep"] = torch.tensor([0.7], device=device)
    if family == "flux":
        call["y"] = torch.randn(1, 768, generator=gen, device=device, dtype=torch.bfloat16)
        call["guidance"] = torch.tensor([3.5], device=device)
    return call


def rank_main(rank: int, world: int, args, queue) -> None:
    sys.path.insert(0, args.comfy)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch.distributed as dist
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.device == "cpu"
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world)
    from cfg_runtime.adapters.families import family_of
    from cfg_runtime.parallel.sequence import make_sequence_group

    out = {}
    for family in args.families.split(","):
        dims = (TINY if args.tiny else FULL)[family]
        with torch.inference_mode():
            model = build(family, dims, args.blocks, args.device)
            split = family_of(model).make_split(model, make_sequence_group(rank, world, world))
            call = inputs(family, dims, args.device)
            t0 = time.monotonic()
            got = model(**call, **split.apply({"transformer_options": {}}))
            entry = {"split": got.float().cpu().numpy(), "split_s": time.monotonic() - t0,
                     "stats": vars(split.stats).copy()}
            dist.barrier()
            if rank == 0:
                t0 = time.monotonic()
                entry["whole"] = model(**call, transformer_options={}).float().cpu().numpy()
                entry["whole_s"] = time.monotonic() - t0
        out[family] = entry
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        dist.barrier()
    queue.put((rank, out))
    dist.barrier()
    dist.destroy_process_group()


def run(args) -> dict:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, 2, args, queue)) for r in range(2)]
    for p in procs:
        p.start()
    got, deadline = {}, time.monotonic() + args.timeout
    while len(got) < 2:
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"a rank failed or timed out (exit codes {[p.exitcode for p in procs]})")
        try:
            rank, value = queue.get(timeout=1.0)
            got[rank] = value
        except queue_module.Empty:
            continue
    for p in procs:
        p.join(60)
    return got


def figures(entry: dict, other: dict) -> dict:
    a, b = torch.from_numpy(entry["whole"]).double(), torch.from_numpy(entry["split"]).double()
    return {"rel_l2": float((b - a).norm() / a.norm()), "max_abs": float((b - a).abs().max()),
            "bit_identical": bool(torch.equal(a, b)), "ranks_agree": bool((entry["split"] == other["split"]).all()),
            "whole_s": round(entry["whole_s"], 3), "split_s_rank0": round(entry["split_s"], 3),
            "stats": entry["stats"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--families", default="wan,flux,qwen_image")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--port", type=int, default=29741)
    ap.add_argument("--timeout", type=float, default=500)
    ap.add_argument("--out", default="")
    ap.add_argument("--device", default="cuda:0", help="both ranks on this device (gloo)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and latents (a CPU dry run)")
    args = ap.parse_args()
    got = run(args)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    report = {"gpu": gpu, "blocks": args.blocks, "tiny": args.tiny, "torch": torch.__version__,
              "families": {f: figures(got[0][f], got[1][f]) for f in got[0]}}
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        with open(os.path.join(args.out, "sequence_families.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
