"""The STG (perturbed) pass at LTX-2 size: forward time with and without queries and keys.

Builds ComfyUI 0.29's own ``LTXAVModel`` at the LTX-2 defaults (48 blocks, video 4096 wide,
audio 2048 wide; random bf16 weights N(0, 0.02)) on one GPU and times, interleaved, one
forward at stage-1 shapes (768x512, 121 frames: video [1,128,16,16,24] = 6144 tokens, audio
[1,8,127,16]) for:

* ``cond``: no STG;
* ``stg direct``: STG on block 29 (video and audio) through the pack's direct route (the
  perturbed self-attention computes only ``to_v`` and ``to_out``);
* ``stg override``: the same through the override route (what the pack did before issue 13:
  queries, keys, their norms and RoPE computed, the attention replaced by V);
* the same two for video-only STG.

Then the block-29 video and audio self-attention modules alone (full attention, the override
route's work, the direct route's work). Every STG pair is checked for equal bits.

    python bench/bench_stg_pass.py --comfy /path/to/ComfyUI-0.29 --reps 15 --out $OUT
    python bench/bench_stg_pass.py --comfy /path/to/ComfyUI-0.29 --tiny --device cpu   # smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TINY = dict(cross_attention_dim=32, audio_cross_attention_dim=16, attention_head_dim=16, audio_attention_head_dim=8,
            num_attention_heads=2, audio_num_attention_heads=2, caption_channels=32, connector_attention_head_dim=16,
            connector_num_attention_heads=2, connector_num_layers=1)


def _timer(device: str):
    if device.startswith("cuda"):
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end), out
    else:
        def run(fn):
            t0 = time.perf_counter()
            out = fn()
            return (time.perf_counter() - t0) * 1e3, out
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--blocks", type=int, default=48)
    ap.add_argument("--stg-block", type=int, default=29)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--module-reps", type=int, default=200)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    sys.path[:0] = [a.comfy, str(REPO)]
    import comfy.cli_args

    comfy.cli_args.args.cpu = a.device == "cpu"
    import comfy.ldm.lightricks.av_model as av
    import comfy.ops

    from cfg_runtime.adapters.families import ltx_options as lb
    from cfg_runtime.adapters.families import ltx_stg

    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    cfg = dict(TINY if a.tiny else {}, num_layers=a.blocks)
    with torch.inference_mode():
        dm = av.LTXAVModel(**cfg, dtype=dtype, device=a.device, operations=comfy.ops.disable_weight_init).eval()
        gen = torch.Generator(device=a.device).manual_seed(0)
        for p in dm.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in dm.parameters())

    g = torch.Generator(device=a.device).manual_seed(1)
    video = (1, 128, 2, 2, 3) if a.tiny else (1, 128, 16, 16, 24)
    audio = (1, 8, 5, 16) if a.tiny else (1, 8, 127, 16)
    width = 2 * dm.caption_channels  # processed text embedding: video | audio halves
    inputs = dict(vx=torch.randn(video, generator=g, device=a.device, dtype=dtype),
                  ax=torch.randn(audio, generator=g, device=a.device, dtype=dtype),
                  ctx=torch.randn(1, 16 if a.tiny else 1024, width, generator=g, device=a.device, dtype=dtype))
    t = torch.tensor([0.5], device=a.device)

    def forward(mo):
        to = mo.get("transformer_options", {})
        with torch.inference_mode():
            return dm([inputs["vx"].clone(), inputs["ax"].clone()], t, inputs["ctx"], None, frame_rate=24,
                      transformer_options=to)

    def override(mo):
        to = dict(mo["transformer_options"])
        to["patches_replace"] = {"dit": {k: dataclasses.replace(v, via_override=True)
                                         for k, v in to["patches_replace"]["dit"].items()}}
        return dict(mo, transformer_options=to)

    b = a.stg_block
    both = lb.branch_model_options({}, perturb_blocks=(b,), perturb_audio_blocks=(b,))
    vonly = lb.branch_model_options({}, perturb_blocks=(b,))
    configs = {"cond": {}, "stg direct": both, "stg override": override(both),
               "video stg direct": vonly, "video stg override": override(vonly)}
    timer = _timer(a.device)
    results: dict = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "device": a.device,
                     "gpu": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else "cpu",
                     "torch": torch.__version__, "blocks": a.blocks, "params": n_params, "build_s": build_s,
                     "video": video, "audio": audio, "stg_block": b, "reps": a.reps}
    outs = {}
    for name, mo in configs.items():  # warm-up, and the bits of each
        forward(mo)
        outs[name] = forward(mo)
    results["bit_equal"] = {
        "stg direct == override": all(torch.equal(x, y) for x, y in zip(outs["stg direct"], outs["stg override"])),
        "video stg direct == override": all(torch.equal(x, y) for x, y in
                                            zip(outs["video stg direct"], outs["video stg override"])),
        "stg differs from cond": not torch.equal(outs["stg direct"][0], outs["cond"][0]),
    }
    del outs
    times = {name: [] for name in configs}
    for _ in range(a.reps):
        for name, mo in configs.items():
            times[name].append(timer(lambda: forward(mo))[0])
    results["forward_ms"] = {n: {"median": statistics.median(v), "min": min(v), "all": v} for n, v in times.items()}

    # the two self-attention modules of the STG block alone, on the inputs they see there
    blk = dm.transformer_blocks[b]
    rope = {}

    def capture(args, extra):
        rope.update(v_pe=args["v_pe"], a_pe=args["a_pe"], vx=args["img"][0].clone(), ax=args["img"][1].clone())
        return extra["original_block"](args)

    forward({"transformer_options": {"patches_replace": {"dit": {("double_block", b): capture}}}})
    fail = lambda what: (_ for _ in ()).throw(RuntimeError(what))  # noqa: E731
    modules = {}
    for stream, attn, x, pe in (("video", blk.attn1, rope["vx"], rope["v_pe"]),
                                ("audio", blk.audio_attn1, rope["ax"], rope["a_pe"])):
        passthrough = ltx_stg._ValuePassthrough(attn, fail, stream)
        over_to = {"optimized_attention_override": lambda func, q, k, v, *r, **kw: v}
        runs = {"attention": lambda: attn(x, pe=pe),
                "override route (q, k, norms, RoPE; no attention)": lambda: attn(x, pe=pe,
                                                                               transformer_options=over_to),
                "direct route (to_v, to_out)": lambda: passthrough(x)}
        with torch.inference_mode():
            for fn in runs.values():
                fn()
            ms = {n: [] for n in runs}
            for _ in range(a.module_reps):
                for n, fn in runs.items():
                    ms[n].append(timer(fn)[0])
            equal = torch.equal(runs["override route (q, k, norms, RoPE; no attention)"](), passthrough(x))
        modules[stream] = {"tokens": x.shape[1], "width": x.shape[-1], "bit_equal_routes": equal,
                           **{n: statistics.median(v) for n, v in ms.items()}}
    results["block_modules_ms"] = modules
    out = Path(a.out) / "stg_pass_bench.json"
    out.write_text(json.dumps(results, indent=1))
    f = results["forward_ms"]
    print(json.dumps({k: v for k, v in results.items() if k not in ("forward_ms",)}, indent=1))
    for n, v in f.items():
        print(f"{n:22s} median {v['median']:9.2f} ms  min {v['min']:9.2f} ms")
    d = f["stg override"]["median"] - f["stg direct"]["median"]
    print(f"saving per perturbed forward (median): {d:.2f} ms = {100 * d / f['stg override']['median']:.2f} %")


if __name__ == "__main__":
    main()
