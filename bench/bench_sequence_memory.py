"""Peak GPU memory per rank of one LTX-2 evaluation at stage-2 size, whole (degree 1) and
split over a sequence group of 2 ranks sharing one GPU (gloo), with this pack's split
(cfg_runtime.adapters.families.ltx2); also the split's error against the whole evaluation
in bf16 and (for reference only: two ranks share one GPU) the evaluation times.

ComfyUI 0.29's LTXAVModel at LTX-2 width (video 32 heads x 128, audio 32 x 64, text 3840),
``--blocks`` blocks, random bf16 weights N(0, 0.02); stage-2 inputs: video latent
[1,128,16,32,48] (24576 tokens), audio [1,8,127,16], 1024 text tokens, frame rate 24.

    python bench/bench_sequence_memory.py --comfy .device/comfy029 --blocks 8 --out $OUT
    python bench/bench_sequence_memory.py --comfy .cache/comfyui-0.29 --device cpu --tiny   # dry run, no memory
"""
from __future__ import annotations

import argparse
import queue as queue_module
import json
import os
import sys
import time

import torch

LTX2 = dict(in_channels=128, audio_in_channels=128, cross_attention_dim=4096, audio_cross_attention_dim=2048,
            attention_head_dim=128, audio_attention_head_dim=64, num_attention_heads=32,
            audio_num_attention_heads=32, caption_channels=3840)
GIB = 1024 ** 3
TINY = dict(in_channels=128, audio_in_channels=128, cross_attention_dim=64, audio_cross_attention_dim=32,
            attention_head_dim=16, audio_attention_head_dim=8, num_attention_heads=4, audio_num_attention_heads=4,
            caption_channels=64, connector_attention_head_dim=8, connector_num_attention_heads=2)


def build(blocks: int, device: str, dims: dict):
    import comfy.ops
    from comfy.ldm.lightricks.av_model import LTXAVModel

    torch.manual_seed(0)
    with torch.device(device):
        model = LTXAVModel(**dims, num_layers=blocks, dtype=torch.bfloat16, device=device,
                           operations=comfy.ops.disable_weight_init)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def inputs(device: str, dims: dict, tiny: bool) -> dict:
    gen = torch.Generator(device).manual_seed(1)
    vx = torch.randn(1, 128, *((2, 4, 6) if tiny else (16, 32, 48)), generator=gen, device=device, dtype=torch.bfloat16)
    ax = torch.randn(1, 8, 127, 16, generator=gen, device=device, dtype=torch.bfloat16)
    context = torch.randn(1, 64 if tiny else 1024, 2 * dims["caption_channels"], generator=gen, device=device,
                          dtype=torch.bfloat16)
    sigma = torch.tensor([0.7], device=device)
    return {"x": [vx, ax], "timestep": (sigma, sigma), "context": context, "attention_mask": None, "frame_rate": 24}


def measure(model, call: dict, options: dict, device: str, reps: int) -> dict:
    """Peak memory above the weights, and median time, of one evaluation (memory: CUDA only)."""
    cuda = device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    sync()
    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = model(**call, transformer_options=dict(options))
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    return {"weights_gib": base / GIB, "peak_gib": peak / GIB, "activations_gib": (peak - base) / GIB,
            "eval_s": sorted(times)[len(times) // 2],
            "out": [t.float().cpu().numpy() for t in out]}  # by value: a rank may exit before the parent reads


def rank_main(rank: int, world: int, args, queue) -> None:
    sys.path.insert(0, args.comfy)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import torch.distributed as dist

    device = args.device
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world)
    from cfg_runtime.adapters.families.ltx2 import with_sequence_parallel
    from cfg_runtime.parallel.sequence import make_sequence_group

    t0 = time.monotonic()

    def say(what: str) -> None:
        print(f"[degree {world} rank {rank} {time.monotonic() - t0:6.1f} s] {what}", file=sys.stderr, flush=True)

    say("process group joined")
    with torch.inference_mode():
        dims = TINY if args.tiny else LTX2
        model = build(args.blocks, device, dims)
        say("model built")
        call = inputs(device, dims, args.tiny)
        options, wrapper = with_sequence_parallel({"transformer_options": {}}, make_sequence_group(rank, world, world))
        split = measure(model, call, options["transformer_options"], device, args.reps)
        split["stats"] = vars(wrapper.stats).copy() if wrapper is not None else {}
        say(f"split evaluation measured ({split['eval_s']:.2f} s)")
        dist.barrier()
        whole = measure(model, call, {}, device, 1) if rank == 0 else None
    queue.put((rank, split, whole))
    dist.barrier()
    dist.destroy_process_group()


def rel_l2(a, b) -> float:
    a, b = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    return float((b - a).norm() / a.norm())


def run_degree(world: int, args) -> list:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=rank_main, args=(r, world, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    got, deadline = [], time.monotonic() + args.timeout
    while len(got) < world:
        if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"a rank failed or timed out (exit codes {[p.exitcode for p in procs]})")
        try:
            got.append(queue.get(timeout=1.0))
        except queue_module.Empty:
            continue
    got.sort(key=lambda r: r[0])
    for p in procs:
        p.join(60)
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--port", type=int, default=29731)
    ap.add_argument("--timeout", type=float, default=500)
    ap.add_argument("--out", default="")
    ap.add_argument("--device", default="cuda:0", help="both ranks on this device (gloo)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths and latent (a CPU dry run)")
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    report = {"blocks": args.blocks, "gpu": gpu, "tiny": args.tiny, "torch": torch.__version__, "degrees": {}}
    for world in (1, 2):
        got = run_degree(world, args)
        whole = got[0][2]
        entry = {"ranks": []}
        for rank, split, _ in got:
            entry["ranks"].append({k: v for k, v in split.items() if k != "out"})
            if rank == 0:
                entry["rel_l2_vs_whole"] = [rel_l2(a, b) for a, b in zip(whole["out"], split["out"])]
                entry["whole_on_rank0"] = {k: v for k, v in whole.items() if k != "out"}
        report["degrees"][world] = entry
        print(json.dumps({world: entry}, indent=1), flush=True)
    if args.out:
        with open(os.path.join(args.out, "sequence_memory.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
