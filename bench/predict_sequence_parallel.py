"""Predict LTX-2 step and job times on 2, 4 and 8 GPUs for every layout "branch groups x
sequence degree", from one-GPU measurements (docs/design: the two measurement tables).

Inputs (measured, see bench/README.md "Sequence parallelism: predicted"):
* one model evaluation of LTX-2 (19.6B dims, random bf16, ComfyUI 0.29 LTXAVModel) on one
  H100: stage 1 (6144 video + 127 audio tokens) 0.374 s, modality-isolated pass 0.320 s;
  stage 2 (24576 + 127) 2.011 s;
* one LTX-2 video block's compute under Ulysses degree N on one H200 (projections + FFN on
  S/N tokens, self-attention on S with H/N heads, cross-attention on S/N queries);
* all-to-all bytes per rank per block (self-attention q, k, v, out plus the video->audio
  K/V exchange, head-split as Lightricks does it).

Model of one evaluation at degree N: the replicated rest (evaluation - 48 video blocks:
audio stream, connectors, modulation, output) + 48 x (block compute at N + block traffic at
N / link bandwidth + collectives x latency); no overlap of compute and traffic (pessimistic).
A step: the branches cost-balanced over the branch groups; the slowest group sets the step.
This pack's video->audio cross-attention all-gathers video K/V instead of the head-split
all-to-all: its traffic is given too ("ours"); equal at N=2, larger at N=4 and 8.

    python bench/predict_sequence_parallel.py [--link-gbs 300] [--latency-us 30] [--json out.json]
        [--decode bench/results/vae_decode_ltx2_2stage_h200_029.json]

With --decode (a bench_vae_decode_gpu.py record at the job's output size), the VAE decode joins
the job: on N GPUs the group decode takes ceil(tiles / N) rounds of the 1-rank run's per-tile
time plus what the ComfyUI process does around it (the warm 1-rank call minus its decode loop:
core's tile bookkeeping, the blend, the way back); on one GPU, VAEDecodeTiled as measured.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field

BLOCKS = 48
VIDEO_WIDTH, AUDIO_WIDTH, BYTES = 4096, 2048, 2  # LTX-2 video / audio inner width, bf16


@dataclass(frozen=True)
class Stage:
    """One stage's measured one-GPU figures and its guidance passes."""

    name: str
    tokens: int
    eval_s: float                      # one branch, one GPU (H100)
    block_ms: dict                     # degree -> one video block's compute (H200)
    a2a_mb: dict                       # degree -> all-to-all MB per rank per block (head-split v2a)
    steps: int
    branch_costs: tuple = field(default=(1.0,))

    @property
    def replicated_s(self) -> float:
        return self.eval_s - BLOCKS * self.block_ms[1] / 1e3


STAGE1 = Stage("stage 1 (768x512x121, 40 steps, 4 passes)", 6144, 0.374,
               {1: 5.42, 2: 2.84, 4: 1.47, 8: 0.83}, {2: 75, 4: 57, 8: 33}, 40,
               (1.0, 1.0, 1.0, 0.320 / 0.374))  # cond, negative, STG, modality-isolated
STAGE2 = Stage("stage 2 (1536x1024x121, 3 steps, cond only)", 24576, 2.011,
               {1: 35.8, 2: 17.7, 4: 8.80, 8: 4.46}, {2: 302, 4: 227, 8: 132}, 3)


def ours_mb(stage: Stage, n: int) -> float:
    """This pack's traffic per rank per block: Ulysses q, k, v, out + all-gathered video K/V for v2a."""
    share = (n - 1) / n
    ulysses = 4 * stage.tokens * VIDEO_WIDTH * BYTES / n * share
    v2a = 2 * stage.tokens * AUDIO_WIDTH * BYTES * share
    return (ulysses + v2a) / 1e6


def eval_s(stage: Stage, n: int, link_gbs: float, latency_us: float, traffic: str = "table") -> float:
    """One evaluation of one branch at sequence degree n."""
    if n == 1:
        return stage.eval_s
    mb = stage.a2a_mb[n] if traffic == "table" else ours_mb(stage, n)
    comm_s = mb / 1e3 / link_gbs + 6 * latency_us / 1e6  # 4 all-to-alls + 2 K/V exchanges per block
    return stage.replicated_s + BLOCKS * (stage.block_ms[n] / 1e3 + comm_s)


def group_loads(costs: tuple, groups: int) -> list[float]:
    """Longest-processing-time first (the pack's cost-balanced plan)."""
    loads = [0.0] * groups
    for c in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += c
    return loads


def step_s(stage: Stage, groups: int, n: int, **kw) -> float:
    return max(group_loads(stage.branch_costs, groups)) * eval_s(stage, n, **kw)


def layouts(gpus: int) -> list[tuple[int, int]]:
    return [(gpus // n, n) for n in (1, 2, 4, 8) if gpus % n == 0 and n <= gpus]


def predict(link_gbs: float, latency_us: float, traffic: str = "table") -> dict:
    """Step and job seconds per GPU count and layout, plus the best layouts."""
    kw = {"link_gbs": link_gbs, "latency_us": latency_us, "traffic": traffic}
    out: dict = {"inputs": {"link_GBps": link_gbs, "latency_us": latency_us, "traffic": traffic}, "gpus": {}}
    for gpus in (1, 2, 4, 8):
        rows = {}
        for stage in (STAGE1, STAGE2):
            rows[stage.name] = {f"{g}x{n}": step_s(stage, g, n, **kw) for g, n in layouts(gpus)}
        s1, s2 = rows[STAGE1.name], rows[STAGE2.name]
        best1, best2 = min(s1, key=s1.get), min(s2, key=s2.get)
        branch_only = s1[f"{gpus}x1"] * STAGE1.steps + s2[f"{gpus}x1"] * STAGE2.steps
        best = s1[best1] * STAGE1.steps + s2[best2] * STAGE2.steps
        out["gpus"][gpus] = {"steps": rows, "best": {"stage1": best1, "stage2": best2},
                             "job_s": {"branch_only": branch_only, "composed": best}}
    return out


def decode_s(record: dict, gpus: int) -> float:
    """Seconds of the final decode on `gpus` GPUs, from a bench_vae_decode_gpu.py record."""
    if gpus == 1:
        return record["tiled_s"]
    warm = next(r for r in record["group_1"] if r["call"] == "warm")
    rank = warm["per_rank"][0]
    per_tile = rank["decode_s"] / rank["tiles"]
    around = warm["seconds"] - rank["decode_s"]  # the ComfyUI process's part and the job's round trip
    return around + math.ceil(record["tile_count"] / gpus) * per_tile


def with_decode(result: dict, record: dict) -> dict:
    for gpus, r in result["gpus"].items():
        r["decode_s"] = decode_s(record, gpus)
        r["job_with_decode_s"] = r["job_s"]["composed"] + r["decode_s"]
    return result


def markdown(result: dict) -> str:
    one = result["gpus"][1]["job_s"]["composed"]
    decode = "decode_s" in result["gpus"][1]
    head = "| GPUs | stage-1 step by layout (s) | stage-2 step by layout (s) | job: branch only | job: composed " \
           "(layout s1 / s2) | vs 1 GPU |"
    lines = [head + (" decode | job + decode | vs 1 GPU |" if decode else ""), "|---" * (9 if decode else 6) + "|"]
    for gpus, r in result["gpus"].items():
        s1 = ", ".join(f"{k} {v:.3f}" for k, v in r["steps"][STAGE1.name].items())
        s2 = ", ".join(f"{k} {v:.3f}" for k, v in r["steps"][STAGE2.name].items())
        job = r["job_s"]
        row = (f"| {gpus} | {s1} | {s2} | {job['branch_only']:.1f} s | {job['composed']:.1f} s "
               f"({r['best']['stage1']} / {r['best']['stage2']}) | {one / job['composed']:.2f}x |")
        if decode:
            total1 = result["gpus"][1]["job_with_decode_s"]
            row += f" {r['decode_s']:.1f} s | {r['job_with_decode_s']:.1f} s | {total1 / r['job_with_decode_s']:.2f}x |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--link-gbs", type=float, default=300.0, help="effective all-to-all GB/s per GPU (H200 NVLink)")
    ap.add_argument("--latency-us", type=float, default=30.0, help="latency of one collective")
    ap.add_argument("--json", default="", help="write the figures here")
    ap.add_argument("--decode", default="", help="a bench_vae_decode_gpu.py record at the output size")
    args = ap.parse_args()
    results = {t: predict(args.link_gbs, args.latency_us, t) for t in ("table", "ours")}
    if args.decode:
        with open(args.decode) as f:
            record = json.load(f)
        results = {t: with_decode(r, record) for t, r in results.items()}
    for traffic, result in results.items():
        label = "head-split v2a (Lightricks' traffic)" if traffic == "table" else "this pack (all-gathered v2a K/V)"
        print(f"\n### {label}; {args.link_gbs:g} GB/s, {args.latency_us:g} us per collective\n")
        print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    assert math.isclose(ours_mb(STAGE1, 2), STAGE1.a2a_mb[2], rel_tol=0.01)  # the two traffic models meet at N=2


if __name__ == "__main__":
    main()
