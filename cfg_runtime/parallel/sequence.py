"""Sequence parallelism (Ulysses) in plain torch.distributed: the sequence group of a
rank, how a token sequence is split over it, and the collectives that move tokens.

One stream of ``total`` tokens is split over the ``degree`` ranks of a sequence group:
every rank holds ``local`` consecutive tokens (``degree * local >= total``; the last
ranks' surplus rows are padding). A rank picks its rows with :meth:`SequenceShard.index`,
which repeats the last real token for padding rows, so padded rows stay finite and are
simply dropped wherever tokens meet (attention keys, the gathered output).

* :func:`tokens_to_heads` / :func:`heads_to_tokens`: the all-to-all that swaps the token
  split for a head split (every rank then sees the whole sequence for ``heads / degree``
  heads) and back.
* :func:`gather_tokens`: every rank gets the whole sequence (padding removed).
* :func:`gather_heads`: every rank gets every head of a replicated (unsplit) stream.

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..errors import GroupConfigError


@dataclass(frozen=True)
class SequenceShard:
    """Which tokens of a ``total``-token stream this rank of a sequence group holds."""

    total: int
    degree: int
    rank: int
    local: int

    @property
    def start(self) -> int:
        return self.rank * self.local

    @property
    def padded(self) -> int:
        """Tokens over the whole group, padding included (``degree * local``)."""
        return self.degree * self.local

    @property
    def padding(self) -> int:
        return self.padded - self.total

    @property
    def real(self) -> int:
        """Real (non-padding) tokens on this rank."""
        return max(0, min(self.local, self.total - self.start))

    def index(self, device: torch.device | str) -> torch.Tensor:
        """Row indices of this rank's tokens in the full stream (padding repeats the last token)."""
        rows = torch.arange(self.start, self.start + self.local, device=device)
        return rows.clamp_(max=self.total - 1)


def plan_shard(total: int, degree: int, rank: int, avoid: Iterable[int] = ()) -> SequenceShard:
    """Split ``total`` tokens over ``degree`` ranks: ``ceil(total / degree)`` each, one more
    while that count is in ``avoid`` (so a local length never equals another stream's
    length, which lets an attention call be told apart by its shapes alone)."""
    if total < 1:
        raise ValueError(f"cannot split an empty token sequence (total {total})")
    if degree < 1 or not 0 <= rank < degree:
        raise ValueError(f"sequence rank {rank} is not in a group of {degree}")
    local = math.ceil(total / degree)
    taken = set(int(a) for a in avoid)
    while local in taken:
        local += 1
    return SequenceShard(total, degree, rank, local)


@dataclass(frozen=True)
class SequenceGroup:
    """This rank's sequence group: ``degree`` ranks, this one at ``rank``; ``handle`` is the
    torch.distributed group (None = the default group, when it spans the whole world)."""

    degree: int
    rank: int
    handle: Any = None

    @property
    def active(self) -> bool:
        return self.degree > 1


SINGLE = SequenceGroup(1, 0, None)


def heads_divisible(heads: int, degree: int) -> bool:
    """Ulysses needs the heads of an attention to split evenly over the group."""
    return heads % degree == 0


# --- collectives ------------------------------------------------------------------------

def _all_to_all(send: torch.Tensor, group: SequenceGroup) -> torch.Tensor:
    """all_to_all_single along dim 0 (``degree`` equal chunks); ``send`` contiguous."""
    import torch.distributed as dist

    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group.handle)
    return recv


def tokens_to_heads(x: torch.Tensor, heads: int, shard: SequenceShard, group: SequenceGroup) -> torch.Tensor:
    """[B, local, heads*d] (this rank's tokens, every head) -> [B, total, heads/degree * d]
    (every real token, this rank's heads: rank j holds heads j*h .. j*h+h-1)."""
    n = group.degree
    b, local, width = x.shape
    h, d = heads // n, width // heads
    send = x.reshape(b, local, n, h, d).permute(2, 0, 1, 3, 4).contiguous()  # [n(dest), B, L, h, d]
    recv = _all_to_all(send, group)  # [n(source = token chunk), B, L, h, d]
    full = recv.permute(1, 0, 2, 3, 4).reshape(b, n * local, h * d)
    return full[:, :shard.total]


def heads_to_tokens(y: torch.Tensor, heads: int, shard: SequenceShard, group: SequenceGroup) -> torch.Tensor:
    """The inverse of :func:`tokens_to_heads`: [B, total, heads/degree * d] -> [B, local, heads*d]."""
    n = group.degree
    b, total, width_local = y.shape
    h = heads // n
    d = width_local // h
    if shard.padding:
        y = torch.cat([y, y.new_zeros(b, shard.padding, width_local)], dim=1)
    send = y.reshape(b, n, shard.local, h, d).permute(1, 0, 2, 3, 4).contiguous()  # [n(dest = chunk), B, L, h, d]
    recv = _all_to_all(send, group)  # [n(source = head group), B, L, h, d]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, shard.local, n * h * d)


def gather_tokens(x: torch.Tensor, shard: SequenceShard, group: SequenceGroup, dim: int = 1) -> torch.Tensor:
    """Every rank's ``local`` rows along ``dim`` -> the whole stream (``total`` rows) on every rank."""
    import torch.distributed as dist

    send = x.movedim(dim, 0).contiguous()
    recv = torch.empty((group.degree * send.shape[0],) + tuple(send.shape[1:]), dtype=send.dtype, device=send.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(recv, send, group=group.handle)
    return recv[:shard.total].movedim(0, dim)


def gather_heads(x: torch.Tensor, group: SequenceGroup) -> torch.Tensor:
    """[B, L, heads/degree * d] (this rank's heads) -> [B, L, heads * d] (every rank's, in rank order)."""
    import torch.distributed as dist

    b, length, width = x.shape
    recv = torch.empty((group.degree * b, length, width), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(recv, x.contiguous(), group=group.handle)
    return recv.reshape(group.degree, b, length, width).permute(1, 2, 0, 3).reshape(b, length, group.degree * width)


# --- process groups ---------------------------------------------------------------------

def make_sequence_group(rank: int, world_size: int, degree: int) -> SequenceGroup:
    """This rank's sequence group in the layout "world = branch groups x degree" (ranks
    g*degree .. g*degree+degree-1 form group g). Collective: every rank of the world calls it
    with the same degree (torch.distributed creates every subgroup on every rank)."""
    if degree < 1 or world_size % degree:
        raise GroupConfigError(f"A sequence degree of {degree} does not divide {world_size} ranks: use a divisor "
                               f"of the parallel size.")
    if degree == 1:
        return SINGLE
    if degree == world_size:
        return SequenceGroup(degree, rank, None)
    import torch.distributed as dist

    mine = None
    for first in range(0, world_size, degree):
        handle = dist.new_group(list(range(first, first + degree)))
        if first <= rank < first + degree:
            mine = handle
    return SequenceGroup(degree, rank % degree, mine)


def cached_sequence_group(cache: dict, rank: int, world_size: int, degree: int) -> SequenceGroup:
    """:func:`make_sequence_group`, made once per degree for the life of a worker (``cache`` is
    the rank's job cache): process groups are not made again for every job."""
    key = ("cfg_parallel_sequence_group", world_size, degree)
    group = cache.get(key)
    if group is None:
        group = cache[key] = make_sequence_group(rank, world_size, degree)
    return group
