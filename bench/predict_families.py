"""Predict step times of Wan 2.1/2.2 14B, Flux dev and Qwen-Image on 2, 4 and 8 GPUs for every
layout "branch groups x sequence degree", on paper (FLOPs and bytes; no measurement yet).

Per block (bf16): token-wise FLOPs (projections, FFN, modulation) = 2 x params_per_token x tokens,
split over the degree for the split tokens, replicated for the text stream of joint-attention
models (Flux double blocks, Qwen-Image); attention FLOPs = 4 x S_q x S_k x width, divided by the
degree (Ulysses: every rank attends over all tokens with heads/N). Time = FLOPs / ``--tflops``
(effective dense bf16 throughput) + all-to-all bytes / ``--link-gbs`` + 4 collectives x latency
per block. All-to-all bytes per rank per block: q, k, v, out of the split tokens,
4 x S x width x 2 bytes x (N-1)/N / N (the text prefix moves only its heads' gather: small).
A step: ``ceil(branches / groups)`` evaluations of one group; the rest of an evaluation (embedding,
output) is ignored (< 1 %). The planner's ``split_share`` of each family is the share printed here.

    python bench/predict_families.py [--tflops 600] [--link-gbs 300] [--latency-us 30] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

BYTES = 2


@dataclass(frozen=True)
class Family:
    """A family at its usual size: ``blocks`` of ``width`` with ``ffn``; ``tokens`` split, ``text``
    tokens (joint: in the attention and replicated token-wise; cross: keys of a cross-attention)."""

    name: str
    blocks: int
    width: int
    ffn: int
    tokens: int
    text: int
    joint: bool

    def token_flops(self) -> float:
        """Per token per block: q, k, v, out (+ cross q, out and K/V of the text for cross models) and FFN."""
        attn = 4 * self.width * self.width
        cross = 0 if self.joint else 2 * self.width * self.width
        return 2 * (attn + cross + 2 * self.width * self.ffn)

    def block_s(self, n: int, tflops: float) -> float:
        split = self.tokens / n * self.token_flops()
        text = (self.text * self.token_flops()) if self.joint else (2 * 2 * self.text * self.width * self.width)
        s_all = self.tokens + (self.text if self.joint else 0)
        attn = 4 * s_all * s_all * self.width / n + (0 if self.joint else 4 * self.tokens / n * self.text * self.width)
        return (split + text + attn) / (tflops * 1e12)

    def a2a_mb(self, n: int) -> float:
        return 0.0 if n == 1 else 4 * self.tokens * self.width * BYTES * (n - 1) / n / n / 1e6

    def eval_s(self, n: int, tflops: float, link_gbs: float, latency_us: float) -> float:
        comm = 0.0 if n == 1 else self.a2a_mb(n) / 1e3 / link_gbs + 4 * latency_us / 1e6
        return self.blocks * (self.block_s(n, tflops) + comm)

    def split_share(self, tflops: float) -> float:
        """Share of a one-GPU evaluation that degree N divides (Amdahl's p)."""
        whole, at2 = self.block_s(1, tflops), self.block_s(2, tflops)
        return 2 * (whole - at2) / whole


FAMILIES = (
    Family("Wan 2.1/2.2 14B, 832x480x81 (32760 tokens, 512 text)", 40, 5120, 13824, 32760, 512, False),
    Family("Flux dev, 1024x1024 (4096 tokens, 512 text; 19 double + 38 single ~ 57 blocks)", 57, 3072, 12288,
           4096, 512, True),
    Family("Qwen-Image, 1328x1328 (6889 tokens, ~256 text)", 60, 3072, 12288, 6889, 256, True),
)


def layouts(world: int) -> list[tuple[int, int]]:
    return [(world // n, n) for n in range(1, world + 1) if world % n == 0]


def table(fam: Family, args) -> dict:
    one = fam.eval_s(1, args.tflops, args.link_gbs, args.latency_us)
    out = {"one_gpu_eval_s": round(one, 4), "split_share": round(fam.split_share(args.tflops), 3),
           "a2a_mb_per_block": {n: round(fam.a2a_mb(n), 1) for n in (2, 4, 8)}, "steps": {}}
    for branches in (2, 1):
        rows = {}
        for world in (2, 4, 8):
            rows[world] = {f"{g}x{n}": round(math.ceil(branches / g) * fam.eval_s(n, args.tflops, args.link_gbs,
                                                                                 args.latency_us), 4)
                           for g, n in layouts(world)}
        out["steps"][f"{branches} branch(es); one GPU {branches * one:.3f} s"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tflops", type=float, default=600.0, help="effective dense bf16 TFLOP/s of one GPU")
    ap.add_argument("--link-gbs", type=float, default=300.0, help="all-to-all bandwidth per rank, GB/s")
    ap.add_argument("--latency-us", type=float, default=30.0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    report = {f.name: table(f, args) for f in FAMILIES}
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
