"""A sequence split made with ComfyUI's per-call block patches (``patches_replace["dit"]``).

No model code is re-run or changed. A diffusion-model wrapper marks the start of each
evaluation and keeps its call's keyword arguments (what a family checks before splitting:
a ControlNet's residuals, a guide mask); the first block's patch asks the family for the
evaluation's :class:`TokenPlan` and keeps this rank's rows of the split tokens; every block's
patch hands the block this rank's per-token tensors (RoPE, per-token modulation: the
family's :meth:`BlockFamily.local_args`) and runs it with :class:`.SequenceAttention`; the last
block's patch gathers the tokens (:meth:`BlockFamily.whole_out`), so the model's own output
step sees the whole stream. A patch already on a block (another node's, the STG patch) runs
inside ours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ...parallel.sequence import SequenceGroup, SequenceShard, gather_tokens, plan_shard
from .attention import SequenceAttention, SequenceStats, slice_rows
from .hooks import add_wrapper, with_block_patches

BlockKey = tuple[str, int]


@dataclass(frozen=True)
class TokenPlan:
    """One evaluation's split: ``total`` split tokens; ``prefix`` replicated tokens that precede
    them in joint attention; ``avoid``: key lengths of the replicated streams."""

    total: int
    prefix: int = 0
    avoid: tuple[int, ...] = ()


class BlockFamily(Protocol):
    """What a family tells the block split."""

    def plan(self, args: dict, call: dict) -> TokenPlan | str:
        """The split of this evaluation (first block's arguments, the model call's keyword
        arguments), or why it runs whole."""

    def local_args(self, args: dict, key: BlockKey, ev: "Evaluation", first: bool) -> dict:
        """Block ``key``'s arguments for this rank (``first``: ``args["img"]`` is still whole)."""

    def whole_out(self, out: dict, ev: "Evaluation") -> dict:
        """The last block's output with the split tokens gathered."""


class Evaluation:
    """The split of the evaluation in flight (decided at the first block, read by every block)."""

    def __init__(self, group: SequenceGroup) -> None:
        self.group = group
        self.stats = SequenceStats()
        self.call: dict = {}
        self.plan: TokenPlan | None = None
        self.shard: SequenceShard | None = None
        self.index: torch.Tensor | None = None

    def begin(self, family: BlockFamily, args: dict, device) -> None:
        plan = family.plan(args, self.call)
        self.plan = self.shard = self.index = None
        if isinstance(plan, str):
            self.stats.unsplit += 1
            if plan not in self.stats.reasons:
                self.stats.reasons.append(plan)
            return
        avoid = tuple(a - plan.prefix for a in plan.avoid)
        self.plan = plan
        self.shard = plan_shard(plan.total, self.group.degree, self.group.rank, avoid=avoid)
        self.index = self.shard.index(device)
        self.stats.evaluations += 1
        self.stats.padding = self.shard.padding

    def rows(self, t: torch.Tensor, what: str, dim: int = 1) -> torch.Tensor:
        """This rank's rows of a per-split-token tensor (one broadcast row stays)."""
        return slice_rows(t, self.index, self.shard.total, what, dim)

    def joint_rows(self, t: torch.Tensor, what: str, dim: int = 1) -> torch.Tensor:
        """This rank's rows of a tensor over prefix + split tokens (the prefix stays whole)."""
        p = self.plan.prefix
        index = torch.cat([torch.arange(p, device=self.index.device), self.index + p])
        if t.shape[dim] != p + self.shard.total:
            raise RuntimeError(f"sequence parallelism: the {what} has {t.shape[dim]} rows, expected "
                               f"{p + self.shard.total}")
        return t.index_select(dim, index.to(t.device))

    def gather(self, t: torch.Tensor, prefix: int = 0) -> torch.Tensor:
        """The whole stream from every rank's rows (after ``prefix`` replicated rows)."""
        whole = gather_tokens(t[:, prefix:], self.shard, self.group)
        return torch.cat([t[:, :prefix], whole], dim=1) if prefix else whole


class _Begin:
    """Diffusion-model wrapper: a new evaluation starts; keep its keyword arguments."""

    def __init__(self, evaluation: Evaluation) -> None:
        self.evaluation = evaluation

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        ev = self.evaluation
        ev.call, ev.shard = kwargs, None
        try:
            return executor(*args, **kwargs)
        finally:
            ev.call, ev.shard = {}, None


class SplitBlock:
    """The replace patch of one block; ``inner`` is a patch that was there before."""

    def __init__(self, key: BlockKey, first: bool, last: bool, family: BlockFamily, evaluation: Evaluation,
                 inner=None) -> None:
        self.key, self.first, self.last = key, first, last
        self.family = family
        self.evaluation = evaluation
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def _run(self, args: dict, extra: dict) -> dict:
        return self.inner(args, extra) if self.inner is not None else extra["original_block"](args)

    def __call__(self, args: dict, extra: dict) -> dict:
        ev = self.evaluation
        if self.first:
            ev.begin(self.family, args, args["img"].device)
        if ev.shard is None:
            return self._run(args, extra)
        local = self.family.local_args(args, self.key, ev, self.first)
        to = dict(local.get("transformer_options") or {})
        to["optimized_attention_override"] = SequenceAttention(
            ev.shard, ev.group, to.get("optimized_attention_override"), ev.stats, prefix=ev.plan.prefix)
        out = self._run(dict(local, transformer_options=to), extra)
        return self.family.whole_out(out, ev) if self.last else out


class BlockSplit:
    """The split of a model whose blocks are ``keys`` (in order) over ``group``; ``apply`` puts it
    into a copy of some model options (the same split state serves every copy). Holds the
    process group: it lives on the rank only."""

    def __init__(self, group: SequenceGroup, family: BlockFamily, keys: tuple[BlockKey, ...]) -> None:
        self.evaluation = Evaluation(group)
        self.family = family
        self.keys = keys

    @property
    def stats(self) -> SequenceStats:
        return self.evaluation.stats

    def apply(self, model_options: dict) -> dict:
        last = len(self.keys) - 1
        patches = {key: (lambda inner, i=i, key=key: SplitBlock(key, i == 0, i == last, self.family,
                                                                 self.evaluation, inner))
                   for i, key in enumerate(self.keys)}
        return add_wrapper(with_block_patches(model_options, patches), _Begin(self.evaluation))
