"""A model wrapper that fails on purpose (tests only): importable by name in the worker ranks.

The test pack puts this folder on sys.path, which spawned ranks copy, so a wrapper pickled
in the ComfyUI process is rebuilt there. It counts model calls per process and fails one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_calls: dict[str, int] = {}


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@dataclass(frozen=True)
class FailingModelCall:
    """Fails the `call`-th model call (0-based) on `rank`: 'oom' tries a real allocation that
    cannot succeed; 'raise' raises a RuntimeError. Other calls run the model unchanged."""

    kind: str
    rank: int
    call: int
    tag: str

    def __call__(self, apply_model, args: dict):
        n = _calls.get(self.tag, 0)
        _calls[self.tag] = n + 1
        if _rank() == self.rank and n == self.call:
            if self.kind == "oom":
                torch.empty(1 << 60, dtype=torch.uint8, device=args["input"].device)  # 1 EiB: always fails
            raise RuntimeError(f"injected model failure on rank {self.rank} at model call {n}")
        return apply_model(args["input"], args["timestep"], **args["c"])
