"""Qwen-Image (``QwenImageTransformer2DModel``; also the Edit models): dual-stream blocks whose
attention is joint over ``text + image`` tokens.

Split with the block patches on ``("double_block", i)``: image tokens split, text whole on every
rank; the joint attention runs as Flux's (:mod:`..split.attention`, ``prefix`` = text), and the
text padding mask ([B, 1, text + image], zero on image keys) is widened to every rank's keys.
RoPE ``pe`` keeps the text rows and this rank's image rows. Reference latents of the Edit
models are image tokens like the others. A ControlNet, per-block patches and the
"index_timestep_zero" reference method (per-token modulation ranges) run whole.
"""
from __future__ import annotations

try:
    from comfy.ldm.qwen_image.model import QwenImageTransformer2DModel
except ImportError:  # 0.3.75 before Qwen-Image
    QwenImageTransformer2DModel = None

from ..split.blocks import BlockSplit, Evaluation, TokenPlan
from .base import ModelFamily

_DIT = "double_block"


class QwenBlocks:
    """How Qwen-Image's block arguments hold the image tokens."""

    def __init__(self, default_ref_method: str | None) -> None:
        self.default_ref_method = default_ref_method

    def plan(self, args: dict, call: dict) -> TokenPlan | str:
        patches = (args.get("transformer_options") or {}).get("patches", {})
        if call.get("control") is not None:
            return "a ControlNet (its residuals cover every image token)"
        if patches.get("double_block") or patches.get("attn1_patch"):
            return "a block or attention patch that reads every image token"
        method = call.get("ref_latents_method", self.default_ref_method)
        if call.get("ref_latents") is not None and method == "index_timestep_zero":
            return "reference latents with the index_timestep_zero method"
        text = args["txt"].shape[1]
        return TokenPlan(args["img"].shape[1], prefix=text, avoid=(text,))

    def local_args(self, args: dict, key, ev: Evaluation, first: bool) -> dict:
        x = ev.rows(args["img"], "image tokens") if first else args["img"]
        return dict(args, img=x, pe=ev.joint_rows(args["pe"], "positional embedding", dim=2))

    def whole_out(self, out: dict, ev: Evaluation) -> dict:
        return dict(out, img=ev.gather(out["img"]))


def make_split(dm, group) -> BlockSplit:
    blocks = QwenBlocks(getattr(dm, "default_ref_method", None))
    return BlockSplit(group, blocks, tuple((_DIT, i) for i in range(len(dm.transformer_blocks))))


FAMILY = ModelFamily(
    name="qwen_image", label="Qwen-Image",
    matches=lambda dm: QwenImageTransformer2DModel is not None and type(dm) is QwenImageTransformer2DModel,
    make_split=make_split, split_share=0.97)  # at 1328², on paper (bench/predict_families.py)
