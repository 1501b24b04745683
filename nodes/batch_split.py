"""The batch_split widget of the CFG Parallel node, the Multi-Branch Guider and the LTX2 Sampler:
a latent batch (batch_size > 1, several seeds) split over batch groups of ranks."""
from __future__ import annotations

from cfg_runtime.errors import PolicyError

from .common import SPLIT_OPTIONS, split_input

BATCH_SPLIT_TIP = ("Split the latent batch (batch_size > 1) over groups of ranks: ranks = batch groups x branch "
                   "ranks x sequence degree. off = every rank samples the whole batch, bit for bit equal to one "
                   "GPU; auto = the layout predicted fastest from the batch, the branches, the sequence split and "
                   "parallel_size (ties keep the branch and sequence layout); N = N batch groups (N divides "
                   "parallel_size, at most the batch). Not with guidance rescale (one std over the whole batch). "
                   "Each sample gets the noise and conditioning it gets unsplit; other matmul shapes round "
                   "differently (measured <= 3.1e-5 max abs per sample on the CPU test models, fp32): not "
                   "bit-exact.")
BATCH_SPLIT_OPTIONS = SPLIT_OPTIONS


def batch_input():
    return split_input("batch_split", BATCH_SPLIT_TIP)


def batch_groups(choice: str | None) -> int:
    """The widget's choice as ParallelSettings.batch_split: 1 off, 0 automatic, N groups."""
    if choice in (None, "", "off"):
        return 1
    if choice == "auto":
        return 0
    if choice not in BATCH_SPLIT_OPTIONS:
        raise PolicyError(f"batch_split must be one of {', '.join(BATCH_SPLIT_OPTIONS)}, got {choice!r}.")
    return int(choice)
