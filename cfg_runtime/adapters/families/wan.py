"""Wan 2.1 / 2.2 (``WanModel``: text- and image-to-video, both experts of 2.2, the 5B ti2v).

One video token stream; self-attention over it, cross-attention to the text (and the CLIP
image tokens of Wan 2.1 i2v), both replicated. Split with the block patches on
``("double_block", i)``: video tokens, per-token modulation ``vec`` (``e0``: one row, or one per
token for 2.2 5B) and the RoPE ``pe`` ([B, tokens, ...]) are sliced; the self-attention goes
through the Ulysses all-to-all; the last block gathers, so ``head`` and unpatchify see every
token. Only the plain ``WanModel`` splits: its subclasses (VACE, camera, S2V, Animate, ...)
add per-block inputs over the whole stream.
"""
from __future__ import annotations

try:
    from comfy.ldm.wan.model import WanModel
except ImportError:  # pragma: no cover - 0.3.75 has Wan too
    WanModel = None

from ..split.blocks import BlockSplit, Evaluation, TokenPlan
from .base import ModelFamily

_DIT = "double_block"
_CLIP_TOKENS = 257  # Wan 2.1 i2v: CLIP image tokens before the text (their own cross-attention)


class WanBlocks:
    """How Wan's block arguments hold the video tokens."""

    def plan(self, args: dict, call: dict) -> TokenPlan | str:
        patches = (args.get("transformer_options") or {}).get("patches", {})
        if patches.get("double_block"):
            return "a block patch that reads every video token"
        text = args["txt"].shape[1]
        return TokenPlan(args["img"].shape[1], avoid=(text, _CLIP_TOKENS, text - _CLIP_TOKENS))

    def local_args(self, args: dict, key, ev: Evaluation, first: bool) -> dict:
        x = ev.rows(args["img"], "video tokens") if first else args["img"]
        return dict(args, img=x, vec=ev.rows(args["vec"], "timestep modulation"),
                    pe=ev.rows(args["pe"], "positional embedding"))

    def whole_out(self, out: dict, ev: Evaluation) -> dict:
        return dict(out, img=ev.gather(out["img"]))


def make_split(dm, group) -> BlockSplit:
    return BlockSplit(group, WanBlocks(), tuple((_DIT, i) for i in range(len(dm.blocks))))


# Share of an evaluation the split divides: 0.999 on paper at 832x480x81 (bench/predict_families.py).
FAMILY = ModelFamily(name="wan", label="Wan 2.1 / 2.2", matches=lambda dm: WanModel is not None and type(dm) is WanModel,
                     make_split=make_split, split_share=0.99)
