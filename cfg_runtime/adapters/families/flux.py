"""Flux (1 and 2) and Chroma: double-stream blocks (text and image tokens, joint attention),
then single-stream blocks (one joint sequence: text first, then image).

Split with the block patches: the image tokens are split, the text stays whole on every
rank (its token-wise layers run replicated; it is short). Every attention is joint over
``text + this rank's image tokens`` (``TokenPlan.prefix`` = text length): the image part goes
through the Ulysses all-to-all, the text keeps this rank's heads (:mod:`..split.attention`).
RoPE ``pe`` ([B, 1, text + image, ...]) keeps the text rows and this rank's image rows. The
last single block gathers the image tokens. A ControlNet, an attention mask or Flux
Kontext's "index_timestep_zero" reference method (per-token modulation ranges) run whole.
"""
from __future__ import annotations

try:
    from comfy.ldm.flux.model import Flux
except ImportError:  # pragma: no cover
    Flux = None
try:
    from comfy.ldm.chroma.model import Chroma
except ImportError:  # pragma: no cover
    Chroma = None

from ..split.blocks import BlockSplit, Evaluation, TokenPlan
from .base import ModelFamily


class FluxBlocks:
    """How Flux's and Chroma's block arguments hold the image tokens."""

    def plan(self, args: dict, call: dict) -> TokenPlan | str:
        if call.get("control") is not None:
            return "a ControlNet (its residuals cover every image token)"
        if args.get("attn_mask") is not None or call.get("attention_mask") is not None:
            return "an attention mask"
        if call.get("ref_latents_method") == "index_timestep_zero":
            return "reference latents with the index_timestep_zero method"
        text = args["txt"].shape[1]
        return TokenPlan(args["img"].shape[1], prefix=text, avoid=(text,))

    def local_args(self, args: dict, key, ev: Evaluation, first: bool) -> dict:
        x = ev.rows(args["img"], "image tokens") if first else args["img"]
        pe = args.get("pe")
        return dict(args, img=x, pe=None if pe is None else ev.joint_rows(pe, "positional embedding", dim=2))

    def whole_out(self, out: dict, ev: Evaluation) -> dict:
        if "txt" in out:  # a double-stream block was the last
            return dict(out, img=ev.gather(out["img"]))
        return dict(out, img=ev.gather(out["img"], prefix=ev.plan.prefix))


def make_split(dm, group) -> BlockSplit:
    skip_double, skip_single = set(getattr(dm, "skip_mmdit", ())), set(getattr(dm, "skip_dit", ()))
    keys = tuple(("double_block", i) for i in range(len(dm.double_blocks)) if i not in skip_double)
    keys += tuple(("single_block", i) for i in range(len(dm.single_blocks)) if i not in skip_single)
    return BlockSplit(group, FluxBlocks(), keys)


# Share of an evaluation the split divides at 1024² (the text stays whole): 0.91 on paper (bench/predict_families.py).
SPLIT_SHARE = 0.91

FAMILY = ModelFamily(name="flux", label="Flux", matches=lambda dm: Flux is not None and type(dm) is Flux,
                     make_split=make_split, split_share=SPLIT_SHARE)
CHROMA = ModelFamily(name="chroma", label="Chroma", matches=lambda dm: Chroma is not None and type(dm) is Chroma,
                     make_split=make_split, split_share=SPLIT_SHARE)
