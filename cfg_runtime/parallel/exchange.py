"""Exchange of branch predictions between ranks: an all-gather in fixed slots.

Each rank sends `slots` predictions (zeros where it has fewer) plus two flags:
rank 0's stop request and "this rank failed". Gathering copies bits, so every rank
ends up with exactly the tensors the owning rank computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

STOP, FAILED = 0, 1
N_FLAGS = 2


@dataclass(frozen=True)
class Gathered:
    """Predictions by [rank][slot], and the flags of every rank."""

    preds: tuple[tuple[torch.Tensor, ...], ...]
    flags: tuple[tuple[bool, ...], ...]

    @property
    def stop(self) -> bool:
        return self.flags[0][STOP]

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        return tuple(r for r, f in enumerate(self.flags) if f[FAILED])


class Exchange(Protocol):
    rank: int
    world_size: int

    def gather(self, local: Sequence[torch.Tensor | None], slots: int, like: torch.Tensor,
               stop: bool = False, failed: bool = False) -> Gathered: ...


class LocalExchange:
    """World of one: nothing to send."""

    rank = 0
    world_size = 1

    def gather(self, local, slots, like, stop=False, failed=False) -> Gathered:
        preds = tuple(p if p is not None else torch.zeros_like(like) for p in local)
        preds = preds + tuple(torch.zeros_like(like) for _ in range(slots - len(preds)))
        return Gathered((preds,), ((bool(stop), bool(failed)),))


def _all_gather_flat(out: torch.Tensor, send: torch.Tensor, group) -> None:
    """All-gather into one flat tensor (newer torch names it all_gather_single)."""
    import torch.distributed as dist

    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, send, group=group)


class CollectiveExchange:
    """All-gather over a torch.distributed process group (gloo or NCCL)."""

    def __init__(self, rank: int, world_size: int, group=None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.group = group

    def gather(self, local, slots, like, stop=False, failed=False) -> Gathered:
        numel = like.numel()
        send = torch.zeros(slots * numel + N_FLAGS, dtype=like.dtype, device=like.device)
        for i, pred in enumerate(local):
            if pred is not None:
                send[i * numel:(i + 1) * numel].copy_(pred.reshape(-1))
        send[slots * numel + STOP] = float(stop)
        send[slots * numel + FAILED] = float(failed)
        recv = torch.empty(self.world_size * send.numel(), dtype=like.dtype, device=like.device)
        _all_gather_flat(recv, send, self.group)
        recv = recv.view(self.world_size, send.numel())
        preds = tuple(
            tuple(recv[r, i * numel:(i + 1) * numel].view(like.shape) for i in range(slots))
            for r in range(self.world_size)
        )
        flag_values = recv[:, slots * numel:].to("cpu", torch.float32).tolist()
        flags = tuple((bool(f[STOP]), bool(f[FAILED])) for f in flag_values)
        return Gathered(preds, flags)
