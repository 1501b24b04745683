"""MiniMax-H3 (``MiniMaxH3Model``, ComfyUI 0.33): one packed single-stream sequence of text,
condition / reference, audio and video tokens ([S, hidden], batch 1), full self-attention in
every block, no cross-attention.

Split with the block patches on ``("double_block", i)``: the whole packed sequence is split
(every token attends to every token, so no stream stays whole). Each block gets this rank's
rows of the RoPE rotation table ([1, S, 1, ...]) and the modulation segments ``(start, stop,
row)`` cut to this rank's rows (``row``: one modulation row, or one per token under a denoise
mask, then sliced too; padding rows repeat the last token's); the self-attention goes through
the Ulysses all-to-all; the last block gathers, so the final layer and unpacking see every token.
"""
from __future__ import annotations

import torch

try:
    from comfy.ldm.minimax.model import MiniMaxH3Model
except ImportError:  # ComfyUI before 0.33
    MiniMaxH3Model = None

from ..split.blocks import BlockSplit, Evaluation, TokenPlan
from .base import ModelFamily

_DIT = "double_block"


def local_segments(segments: list, start: int, real: int, local: int) -> list:
    """Modulation segments over global rows, cut to rows ``start .. start+real`` and shifted to 0;
    a per-token ``row`` (LongTensor) is cut alike; the padding rows ``real .. local`` take the
    segment of the sequence's last token."""
    out = []
    for a, b, row in segments:
        lo, hi = max(a, start), min(b, start + real)
        if lo < hi:
            out.append((lo - start, hi - start, row[lo - a:hi - a] if torch.is_tensor(row) else row))
    if local > real:
        row = segments[-1][2]
        out.append((real, local, row[-1:].repeat(local - real) if torch.is_tensor(row) else row))
    return out


class MiniMaxBlocks:
    """How MiniMax-H3's block arguments hold the packed sequence."""

    def plan(self, args: dict, call: dict) -> TokenPlan | str:
        return TokenPlan(args["img"].shape[0])

    def local_args(self, args: dict, key, ev: Evaluation, first: bool) -> dict:
        shard = ev.shard
        x = ev.rows(args["img"], "packed tokens", dim=0) if first else args["img"]
        segments = local_segments(args["mod_segments"], shard.start, shard.real, shard.local)
        return dict(args, img=x, mod_segments=segments, rope_freqs=ev.rows(args["rope_freqs"], "RoPE table"))

    def whole_out(self, out: dict, ev: Evaluation) -> dict:
        return dict(out, img=ev.gather(out["img"].unsqueeze(0)).squeeze(0))


def make_split(dm, group) -> BlockSplit:
    return BlockSplit(group, MiniMaxBlocks(), tuple((_DIT, i) for i in range(len(dm.blocks))))


FAMILY = ModelFamily(name="minimax_h3", label="MiniMax-H3",
                     matches=lambda dm: MiniMaxH3Model is not None and type(dm) is MiniMaxH3Model,
                     make_split=make_split, split_share=0.97)  # as Qwen-Image: every block splits; not measured
