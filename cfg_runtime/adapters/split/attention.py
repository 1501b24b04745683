"""Attention on split tokens: the per-call ``optimized_attention_override`` of a split evaluation.

A family says which attention calls see split tokens through two numbers of the evaluation:
``prefix`` (replicated tokens that come first in a joint attention: the text of Flux or
Qwen-Image; 0 for a stream of its own, as LTX and Wan video) and the shard's ``local``
length, chosen so that ``prefix + local`` differs from every replicated stream's length
(:func:`plan_shard`'s ``avoid``). Then, by the key length of a call:

* keys of ``prefix + local`` and queries too: self- or joint attention over the split
  stream. Ulysses: the split tokens go through the all-to-all (tokens -> heads), the
  replicated prefix keeps this rank's heads, attention runs over every real token with
  ``heads / degree`` heads, and the outputs go back (heads -> tokens; the prefix all-gathers
  its heads). Heads that do not divide by the degree: K/V are all-gathered instead (queries
  stay local; same result, more traffic). A mask over the replicated text keys only
  (Qwen-Image's) is widened to every rank's keys; any other mask is refused;
* keys of ``prefix + local``, other queries (LTX-2's audio over video): K/V all-gathered;
* any other key length (cross-attention to replicated text or audio): local, no traffic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...parallel.sequence import (SequenceGroup, SequenceShard, gather_heads, gather_tokens, heads_divisible,
                                  heads_to_tokens, tokens_to_heads)


@dataclass
class SequenceStats:
    """What the split did on this rank (for the job summary and the tests)."""

    evaluations: int = 0
    unsplit: int = 0
    ulysses_calls: int = 0
    gathered_kv_calls: int = 0
    padding: int = 0
    reasons: list = field(default_factory=list)


class SequenceAttention:
    """optimized_attention_override for one split model evaluation (see the module doc)."""

    def __init__(self, shard: SequenceShard, group: SequenceGroup, previous, stats: SequenceStats,
                 prefix: int = 0) -> None:
        self.shard = shard
        self.group = group
        self.previous = previous
        self.stats = stats
        self.prefix = prefix

    def _attend(self, func, q, k, v, heads, kwargs):
        if self.previous is not None:
            return self.previous(func, q, k, v, heads, **kwargs)
        return func(q, k, v, heads, **kwargs)

    def __call__(self, func, *args, **kwargs):
        q, k, v, heads, rest = _unpack(args, kwargs)
        heads_first = bool(rest.pop("skip_reshape", False))
        split_len = self.prefix + self.shard.local
        if _length(k, heads_first) != split_len:
            if heads_first:
                rest["skip_reshape"] = True
            return self._attend(func, q, k, v, heads, rest)
        out_heads_first = bool(rest.pop("skip_output_reshape", False))
        if heads_first:
            q, k, v = (_tokens_last(t) for t in (q, k, v))
        if q.shape[1] == split_len:
            out = self._self_attention(func, q, k, v, heads, rest)
        else:
            self.stats.gathered_kv_calls += 1  # another stream's queries over every split token
            out = self._attend(func, q, self._whole(k), self._whole(v), heads, rest)
        return out.unflatten(-1, (heads, -1)).transpose(1, 2) if out_heads_first else out

    def _whole(self, t: torch.Tensor) -> torch.Tensor:
        """The replicated prefix, then every rank's split tokens (padding dropped)."""
        whole = gather_tokens(t[:, self.prefix:], self.shard, self.group)
        return torch.cat([t[:, :self.prefix], whole], dim=1) if self.prefix else whole

    def _self_attention(self, func, q, k, v, heads, rest):
        rest = dict(rest)
        if rest.get("mask") is not None:
            rest["mask"] = self._key_mask(rest["mask"])
        else:
            rest.pop("mask", None)
        if not heads_divisible(heads, self.group.degree):
            self.stats.gathered_kv_calls += 1
            return self._attend(func, q, self._whole(k), self._whole(v), heads, rest)
        self.stats.ulysses_calls += 1
        n, p = self.group.degree, self.prefix
        q, k, v = (self._to_heads(t, heads) for t in (q, k, v))
        out = self._attend(func, q, k, v, heads // n, rest)
        local = heads_to_tokens(out[:, p:], heads, self.shard, self.group)
        return torch.cat([gather_heads(out[:, :p], self.group), local], dim=1) if p else local

    def _key_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask over the keys only (Qwen-Image's text mask: [B, 1, prefix + local], zero on the
        split tokens) for the keys of every rank; any other mask cannot be split."""
        p, split_len = self.prefix, self.prefix + self.shard.local
        if mask.shape[-1] != split_len or any(n != 1 for n in mask.shape[1:-1]) or bool(mask[..., p:].any()):
            raise RuntimeError(f"sequence parallelism: an attention over split tokens got a mask of shape "
                               f"{tuple(mask.shape)} that is not a mask of the replicated text only; please report "
                               f"the model and the ComfyUI version.")
        return torch.cat([mask[..., :p], mask.new_zeros(*mask.shape[:-1], self.shard.total)], dim=-1)

    def _to_heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        """[B, prefix + local, heads*d] -> [B, prefix + total, heads/degree * d] (this rank's heads)."""
        split = tokens_to_heads(t[:, self.prefix:], heads, self.shard, self.group)
        if not self.prefix:
            return split
        width = t.shape[-1] // self.group.degree
        mine = t[:, :self.prefix, self.group.rank * width:(self.group.rank + 1) * width]
        return torch.cat([mine, split], dim=1)


def _length(t: torch.Tensor, heads_first: bool) -> int:
    return t.shape[2] if heads_first else t.shape[1]


def _tokens_last(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, d] -> [B, L, heads*d]."""
    return t.transpose(1, 2).flatten(2)


def _unpack(args: tuple, kwargs: dict):
    """(q, k, v, heads, other keyword arguments) of an attention call."""
    rest = dict(kwargs)
    names = (("q", "query"), ("k", "key"), ("v", "value"), ("heads", "heads"))
    values = list(args[:4])
    for short, long in names[len(values):]:
        values.append(rest.pop(short) if short in rest else rest.pop(long))
    if len(args) == 5:  # optimized_attention_masked(q, k, v, heads, mask, ...)
        rest["mask"] = args[4]
    elif len(args) > 5:
        raise RuntimeError(f"sequence parallelism: unexpected positional attention arguments ({len(args)})")
    return (*values, rest)


def slice_rows(t: torch.Tensor, index: torch.Tensor, total: int, what: str, dim: int = 1) -> torch.Tensor:
    """Rows ``index`` (along ``dim``) of a per-token tensor; one row (broadcast over tokens) is kept as is."""
    if t.shape[dim] == 1:
        return t
    if t.shape[dim] != total:
        raise RuntimeError(f"sequence parallelism: the {what} has {t.shape[dim]} rows, expected 1 or {total} "
                           f"(one per split token)")
    return t.index_select(dim, index.to(t.device))
