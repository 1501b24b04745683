"""LTX-Video (``LTXVModel``; 0.3.75 and 0.29): one video stream, text cross-attention.

Split with the generic block patches (:mod:`..split.blocks`) on ``("double_block", i)``: the
video tokens, each block's per-token timestep modulation (``vec``) and rotary embedding
(``pe``) are sliced to this rank's rows; the video self-attention goes through the Ulysses
all-to-all; text cross-attention stays local. An evaluation with a guide self-attention mask
(0.29 guide attenuation) runs whole.
"""
from __future__ import annotations

try:
    from comfy.ldm.lightricks.model import LTXVModel
except ImportError:  # pragma: no cover - every supported ComfyUI has LTX-Video
    LTXVModel = None
try:
    from comfy.ldm.lightricks.av_model import LTXAVModel
except ImportError:  # 0.3.75: no LTX-2
    LTXAVModel = None

from ..split.blocks import BlockSplit, Evaluation, TokenPlan
from .base import STG, ModelFamily
from .ltx2 import _branch_options
from .ltx_options import count_transformer_blocks

_DIT = "double_block"


class LTXVBlocks:
    """How LTX-Video's block arguments hold the video tokens."""

    def plan(self, args: dict, call: dict) -> TokenPlan | str:
        if args.get("self_attention_mask") is not None:
            return "a guide self-attention mask (guide attenuation)"
        return TokenPlan(args["img"].shape[1], avoid=(args["txt"].shape[1],))

    def local_args(self, args: dict, key, ev: Evaluation, first: bool) -> dict:
        x = ev.rows(args["img"], "video tokens") if first else args["img"]
        pe = args["pe"]  # 0.29: (rotation matrix [B, tokens, ...], split mode); 0.3.75: [B, 1, tokens, ...]
        pe = (ev.rows(pe[0], "positional embedding"), pe[1]) if isinstance(pe, tuple) else ev.rows(
            pe, "positional embedding", dim=2)
        return dict(args, img=x, vec=ev.rows(args["vec"], "timestep modulation"), pe=pe)

    def whole_out(self, out: dict, ev: Evaluation) -> dict:
        return dict(out, img=ev.gather(out["img"]))


def make_split(dm, group) -> BlockSplit:
    return BlockSplit(group, LTXVBlocks(), tuple((_DIT, i) for i in range(len(dm.transformer_blocks))))


def _matches(dm) -> bool:
    return LTXVModel is not None and isinstance(dm, LTXVModel) and not (
        LTXAVModel is not None and isinstance(dm, LTXAVModel))


# Everything but the input/output projections runs on split tokens (the text is short).
FAMILY = ModelFamily(name="ltxv", label="LTX-Video", matches=_matches, make_split=make_split, split_share=0.95,
                     passes=frozenset({STG}), branch_options=_branch_options, blocks=count_transformer_blocks)
