"""Sequence parallelism for ComfyUI's LTX-Video model (``LTXVModel``; 0.3.75 and 0.29).

LTX-Video has one token stream (video) and text cross-attention, so the split is made at
the block boundary with per-call ``patches_replace["dit"][("double_block", i)]`` patches
(no model code is re-run or changed): block 0's patch keeps this rank's rows of the video
tokens, every block's patch slices that block's per-token timestep modulation and rotary
embedding to the same rows and runs the block with the sequence attention override of
:mod:`.ltx_sequence` (video self-attention through the Ulysses all-to-all, text
cross-attention local), and the last block's patch all-gathers the tokens, so ComfyUI's
own output step sees the whole stream. A replace patch already on a block (another node's,
or the pack's STG patch) is called in turn.

An evaluation with a guide self-attention mask (0.29 guide attenuation) is not split.
"""
from __future__ import annotations

import comfy.patcher_extension

from ...parallel.sequence import SequenceGroup, SequenceShard, gather_tokens, plan_shard
from .ltx2 import SequenceAttention, SequenceStats, slice_rows

_DIT = "double_block"


class _Evaluation:
    """The split of the evaluation in flight (decided at block 0, read by every block)."""

    def __init__(self, group: SequenceGroup) -> None:
        self.group = group
        self.stats = SequenceStats()
        self.shard: SequenceShard | None = None
        self.index = None

    def begin(self, args: dict) -> None:
        self.shard = self.index = None
        if args.get("self_attention_mask") is not None:
            self.stats.unsplit += 1
            return
        x, text = args["img"], args["txt"]
        self.shard = plan_shard(x.shape[1], self.group.degree, self.group.rank, avoid=(text.shape[1],))
        self.index = self.shard.index(x.device)
        self.stats.evaluations += 1
        self.stats.padding = self.shard.padding


def _slice_pe(pe, index, total: int):
    """0.29: (rotation matrix [B, tokens, ...], split mode); 0.3.75: a tensor [B, 1, tokens, ...]."""
    if isinstance(pe, tuple):
        return slice_rows(pe[0], index, total, "positional embedding"), pe[1]
    return slice_rows(pe.movedim(2, 1), index, total, "positional embedding").movedim(1, 2)


class SplitBlock:
    """The replace patch of block ``block`` (of ``blocks``); ``inner`` is a patch that was
    there before. Shares ``evaluation`` with the other blocks' patches of the same options."""

    def __init__(self, block: int, blocks: int, evaluation: _Evaluation, inner=None) -> None:
        self.block = block
        self.last = block == blocks - 1
        self.evaluation = evaluation
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def _run(self, args: dict, extra: dict) -> dict:
        return self.inner(args, extra) if self.inner is not None else extra["original_block"](args)

    def __call__(self, args: dict, extra: dict) -> dict:
        ev = self.evaluation
        if self.block == 0:
            ev.begin(args)
        if ev.shard is None:
            return self._run(args, extra)
        shard, index = ev.shard, ev.index
        x = args["img"].index_select(1, index) if self.block == 0 else args["img"]
        to = dict(args.get("transformer_options") or {})
        to["optimized_attention_override"] = SequenceAttention(shard, ev.group, to.get("optimized_attention_override"),
                                                                ev.stats)
        local = dict(args, img=x, vec=slice_rows(args["vec"], index, shard.total, "timestep modulation"),
                     pe=_slice_pe(args["pe"], index, shard.total), transformer_options=to)
        out = self._run(local, extra)
        if self.last:
            out = dict(out, img=gather_tokens(out["img"], shard, ev.group))
        return out


class BlockSplit:
    """The split of an LTX-Video model with ``blocks`` blocks over ``group``; ``apply`` puts it
    into a copy of some model options (the same split state serves every copy)."""

    def __init__(self, group: SequenceGroup, blocks: int) -> None:
        self.evaluation = _Evaluation(group)
        self.blocks = blocks

    @property
    def stats(self) -> SequenceStats:
        return self.evaluation.stats

    def apply(self, model_options: dict) -> dict:
        options = comfy.patcher_extension.copy_nested_dicts(model_options)
        to = options.setdefault("transformer_options", {})
        replace = to.setdefault("patches_replace", {})
        dit = dict(replace.get("dit") or {})
        for i in range(self.blocks):
            dit[(_DIT, i)] = SplitBlock(i, self.blocks, self.evaluation, inner=dit.get((_DIT, i)))
        replace["dit"] = dit
        return options
