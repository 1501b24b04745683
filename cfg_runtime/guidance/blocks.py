"""The one rule for STG block lists: whole numbers from 0, below the model's block count."""
from __future__ import annotations

import operator
import re
from typing import Iterable, Optional

from ..errors import clip


def block_indices(blocks: Iterable[int], num_blocks: Optional[int] = None, *, unique: bool = False) -> tuple[int, ...]:
    """`blocks` as sorted, de-duplicated ints, or ValueError saying what is wrong.

    num_blocks: the model's transformer block count (None: not checked here).
    unique: refuse a block listed twice instead of merging it (a user's list)."""
    if isinstance(blocks, (str, bytes)):
        raise ValueError(f"STG blocks must be integers, got {blocks!r}")
    seen: list[int] = []
    for b in blocks:
        index = _index(b)
        if index < 0:
            raise ValueError(f"STG block {index} is out of range (negative index {index}): block indices count "
                             f"from 0 (the last LTX-2 block is 47)")
        if num_blocks is not None and index >= num_blocks:
            raise ValueError(f"STG block {index} is out of range: this model has {num_blocks} transformer blocks "
                             f"(0-{num_blocks - 1})")
        if unique and index in seen:
            raise ValueError(f"stg_blocks {tuple(blocks)} lists a block twice; list each block once.")
        seen.append(index)
    return tuple(sorted(set(seen)))


def _index(b) -> int:
    """An int block index (Python, numpy or torch integer), else ValueError."""
    if isinstance(b, bool):
        raise ValueError(f"STG block {b!r} is not an integer (block indices are whole numbers)")
    try:
        return operator.index(b)
    except TypeError:
        raise ValueError(f"STG block {b!r} is not an integer (block indices are whole numbers)") from None


_DIGITS = re.compile(r"[0-9]{1,6}")  # ASCII digits only ('²' passes str.isdigit()); no model has a million blocks
EXAMPLE = "e.g. '29' (LTX-2) or '28' (LTX-2.3) or '28,29'"


def parse_block_list(text: str) -> tuple[int, ...]:
    """'29' / '28, 29' -> (28, 29), in the order written; ValueError saying what to write for anything else."""
    blocks: list[int] = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not _DIGITS.fullmatch(part):
            if part.isascii() and part.isdigit():
                what = "is too large for a block index (a model has at most a few hundred blocks)"
            else:
                what = "is not a block index" + (" (use the digits 0-9)" if part.isdigit() else "")
            raise ValueError(f"{clip(part, 20)} {what}. Write block numbers counting from 0, separated by commas, "
                             f"{EXAMPLE}.")
        block = int(part)
        if block in blocks:
            raise ValueError(f"block {block} is listed twice in {clip(text, 60)}; list each block once.")
        blocks.append(block)
    return tuple(blocks)
