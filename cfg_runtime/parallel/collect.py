"""Collect one Python object from every rank on rank 0 (tiles of any shape; pickled)."""
from __future__ import annotations

from typing import Any


def gather_to_first(obj: Any, rank: int, world_size: int, group=None) -> list | None:
    """Every rank's `obj`, by rank, on rank 0; None on the other ranks. Tensors inside should be
    on the CPU (they are pickled: a GPU tensor would land on the sender's device)."""
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0, group=group)
    return gathered


def share(count: int, rank: int, world_size: int) -> range:
    """The items of `count` that `rank` takes: round robin, so every rank gets count // N or one more."""
    return range(rank, count, world_size)
