"""Per-call branch options for the LTX models (worker-side model code).

The LTX guidance branches that are not plain conditionings are made by
``model_options`` alone, so that one loaded model serves every branch at the same
time (several threads, or several worker processes that receive the options by
pickle) without any shared state being changed:

* **perturbed pass (STG)**: in the chosen transformer blocks the *self*-attention of
  the chosen stream returns its values instead of attending (attention output = V,
  so the module computes ``to_out(to_v(x))``, with its per-head gate where it has one).
  Video and audio have separate block lists (``perturb_blocks`` for the video
  self-attention ``attn1``, ``perturb_audio_blocks`` for the audio self-attention
  ``audio_attn1``); both apply in the same forward. Text cross-attention and the
  audio<->video cross-attention are untouched.
* **modality-isolated pass** (LTX-2 audio+video only): the audio->video and
  video->audio cross-attention are switched off through the per-call keys
  ``a2v_cross_attn`` / ``v2a_cross_attn`` that ComfyUI's ``BasicAVTransformerBlock``
  reads from ``transformer_options``.

The perturbed pass is hooked per block by ltx_stg.py. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from ...guidance.blocks import block_indices
from .base import diffusion_model
from .ltx_stg import STREAMS, PerturbedBlock

__all__ = [
    "BRANCH_KEY",
    "STREAMS",
    "LTXBranch",
    "PerturbedBlock",
    "branch_model_options",
    "branch_of",
    "check_blocks",
    "count_transformer_blocks",
    "model_family",
]

# transformer_options key that records which LTX branch a model_options describes
# (plain data; lets callers compare/batch branches without inspecting patches).
BRANCH_KEY = "cfg_parallel_ltx_branch"

_DIT_KEY = "double_block"



@dataclasses.dataclass(frozen=True)
class LTXBranch:
    """What :func:`branch_model_options` switched on (stored under ``BRANCH_KEY``)."""

    perturb_blocks: tuple[int, ...] = ()        # video self-attention
    perturb_audio_blocks: tuple[int, ...] = ()  # audio self-attention
    isolate_modalities: bool = False
    run_video: bool = True
    run_audio: bool = True

    @property
    def is_plain(self) -> bool:
        return self == LTXBranch()


def branch_of(model_options: dict) -> LTXBranch:
    """The LTX branch a ``model_options`` (made by :func:`branch_model_options`) runs."""
    to = (model_options or {}).get("transformer_options", {}) or {}
    br = to.get(BRANCH_KEY)
    return br if isinstance(br, LTXBranch) else LTXBranch()


def branch_model_options(
    model_options: dict,
    *,
    perturb_blocks: Iterable[int] = (),
    perturb_audio_blocks: Iterable[int] = (),
    isolate_modalities: bool = False,
    run_video: bool = True,
    run_audio: bool = True,
) -> dict:
    """A new ``model_options`` whose next forward runs the perturbed and/or the
    modality-isolated pass.

    ``perturb_blocks``: transformer blocks whose *video* self-attention becomes value
    passthrough; ``perturb_audio_blocks``: the same for the *audio* self-attention
    (LTX-2 only; an LTX-Video model has no audio stream). Validate both against the
    model with :func:`check_blocks`. ``isolate_modalities``: audio<->video
    cross-attention off (LTX-2 AV only). ``run_video`` /
    ``run_audio`` False: that stream of an LTX-2 block is not computed (ComfyUI's per-call
    ``run_vx`` / ``run_ax``; what ltx-pipelines does for a modality that skips the step).

    The input is never mutated: the dicts on the way to what changes
    (``transformer_options``, ``patches_replace``, ``patches_replace["dit"]``) are
    copied; everything else is shared. With nothing switched on the result is a
    shallow copy equal to the input. Everything added is picklable plain data.
    """
    video = block_indices(perturb_blocks)
    audio = block_indices(perturb_audio_blocks)
    isolate = bool(isolate_modalities)
    out = dict(model_options or {})
    if not video and not audio and not isolate and run_video and run_audio:
        return out

    to = dict(out.get("transformer_options") or {})
    if video or audio:
        to["patches_replace"] = _with_perturbed_blocks(to.get("patches_replace"), video, audio)
    if isolate:
        to["a2v_cross_attn"] = False
        to["v2a_cross_attn"] = False
    if not run_video:
        to["run_vx"] = False
    if not run_audio:
        to["run_ax"] = False

    to[BRANCH_KEY] = _merged_branch(to.get(BRANCH_KEY), video, audio, isolate, run_video, run_audio)
    out["transformer_options"] = to
    return out


def _with_perturbed_blocks(patches_replace: dict | None, video: tuple[int, ...], audio: tuple[int, ...]) -> dict:
    """A copy of `patches_replace` with a PerturbedBlock on every block of either list."""
    patches_replace = dict(patches_replace or {})
    dit = dict(patches_replace.get("dit") or {})
    for b in sorted(set(video) | set(audio)):
        streams = tuple(s for s, blocks in zip(STREAMS, (video, audio)) if b in blocks)
        key = (_DIT_KEY, b)
        previous = dit.get(key)
        if isinstance(previous, PerturbedBlock):  # merge: wrapping twice would misread the calls
            streams = tuple(s for s in STREAMS if s in streams or s in previous.streams)
            dit[key] = dataclasses.replace(previous, streams=streams)
        else:
            dit[key] = PerturbedBlock(block=b, streams=streams, inner=previous)
    patches_replace["dit"] = dit
    return patches_replace


def _merged_branch(before, video, audio, isolate: bool, run_video: bool, run_audio: bool) -> LTXBranch:
    """The branch record after this call's switches join what the options already had."""
    before = before if isinstance(before, LTXBranch) else LTXBranch()
    return LTXBranch(
        perturb_blocks=tuple(sorted(set(before.perturb_blocks) | set(video))),
        perturb_audio_blocks=tuple(sorted(set(before.perturb_audio_blocks) | set(audio))),
        isolate_modalities=before.isolate_modalities or isolate,
        run_video=before.run_video and bool(run_video),
        run_audio=before.run_audio and bool(run_audio),
    )


def model_family(model) -> str:
    """"ltxav" (LTX-2 audio+video), "ltxv" (LTX-Video) or "other" (the family lookup, in LTX words)."""
    from . import family_of  # the registry imports this module

    return {"ltx2": "ltxav", "ltxv": "ltxv"}.get(family_of(model).name, "other")


def count_transformer_blocks(model) -> int:
    """Number of transformer blocks of a model (ModelPatcher, BaseModel or module)."""
    dm = diffusion_model(model)
    blocks = getattr(dm, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"{type(dm).__name__} has no transformer_blocks")
    return len(blocks)


def check_blocks(model, blocks: Iterable[int]) -> tuple[int, ...]:
    """Validate STG blocks for a model; returns them sorted and de-duplicated.

    Raises ValueError for a model that is not an LTX model and for a block out of
    range, e.g. "STG block 31 is out of range: this model has 28 transformer blocks
    (0-27)".
    """
    family = model_family(model)
    if family == "other":
        raise ValueError(
            "STG (the perturbed pass) needs an LTX model (LTX-Video or LTX-2); this "
            f"model is {type(diffusion_model(model)).__name__}")
    return block_indices(blocks, count_transformer_blocks(model))
