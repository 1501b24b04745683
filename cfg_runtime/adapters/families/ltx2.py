"""Ulysses sequence parallelism for ComfyUI's LTX-2 audio+video model (``LTXAVModel``).

Hooked per call only: :func:`with_sequence_parallel` adds a ``DIFFUSION_MODEL`` wrapper
(``comfy.patcher_extension``) to a copy of the model options; the model is never changed.
At sequence degree 1 no wrapper is added, so that path is ComfyUI's code unchanged. In the
wrapper, one model evaluation runs the model's own steps (``_process_input``, timestep,
context, positions, blocks, output) with the video stream split over the sequence group:

* video tokens, their positional embeddings (self and audio<->video cross) and their
  per-token timestep modulations are sliced to this rank's rows (:class:`SequenceShard`,
  padded to a multiple of the degree); audio and text stay whole on every rank;
* the blocks run with a per-call ``optimized_attention_override``: the video
  self-attention goes through an all-to-all (tokens -> heads, attention over every real
  token, heads -> tokens); the video->audio cross-attention (audio queries over all video
  tokens) all-gathers the video K/V; audio->video and text cross-attention, audio
  self-attention and every token-wise layer run locally with no communication;
* the output video tokens are all-gathered, padding dropped, and ComfyUI's own output
  step runs on the whole stream.

Padding never reaches a result: padded rows repeat the last token (finite) and are cut
wherever tokens meet (keys of both attentions, the gathered output). The override tells
the calls apart by shapes: the local video length is chosen to differ from the audio and
text lengths (:func:`plan_shard`'s ``avoid``), so "keys of the local video length" is the
video self-attention (queries of that length too) or the video->audio cross-attention.

When the video self-attention heads do not divide by the degree, the video
self-attention all-gathers K/V instead (queries stay local): same result, more traffic.
A guide self-attention mask (0.29 guide attenuation) is not split: that evaluation runs
whole on every rank (correct, not faster).
"""
from __future__ import annotations

import logging

import torch

try:
    from comfy.ldm.lightricks.av_model import CompressedTimestep, LTXAVModel
except ImportError:  # a ComfyUI without LTX-2 audio+video (0.3.75): nothing to split
    CompressedTimestep = LTXAVModel = None

from ...parallel.sequence import SequenceGroup, SequenceShard, gather_tokens, plan_shard
from ..split.attention import SequenceAttention, SequenceStats, slice_rows
from ..split.hooks import add_wrapper
from .base import MODALITY, STG, STG_AUDIO, ModelFamily
from .ltx_options import branch_model_options, count_transformer_blocks

log = logging.getLogger("cfg_parallel")

_FORWARD_ARGS = ("x", "timestep", "context", "attention_mask", "frame_rate", "transformer_options", "keyframe_idxs")


# --- slicing the video stream's per-token inputs ---------------------------------------------

def _slice_timestep(ts, index: torch.Tensor, total: int, what: str):
    """A video timestep modulation (CompressedTimestep or [B, tokens, D]) for this rank's tokens."""
    if ts is None:
        return None
    if not isinstance(ts, CompressedTimestep):
        return slice_rows(ts, index, total, what)
    if ts.patches_per_frame == 1:
        return CompressedTimestep(slice_rows(ts.data, index, total, what), None)
    if ts.num_frames * ts.patches_per_frame != total:
        raise RuntimeError(f"sequence parallelism: the {what} covers {ts.num_frames} frames of "
                           f"{ts.patches_per_frame} tokens, not the {total} video tokens")
    frames = torch.div(index, ts.patches_per_frame, rounding_mode="floor").to(ts.data.device)
    return CompressedTimestep(ts.data.index_select(1, frames), None)  # one row per local token


def _slice_pe(pe, index: torch.Tensor, total: int, what: str):
    """A rotary embedding (rotation matrix [B, tokens, ...], split mode) for this rank's tokens."""
    matrix, split_mode = pe
    return slice_rows(matrix, index, total, what), split_mode


def _split_inputs(x, timestep, pe, shard: SequenceShard):
    """This rank's share of the video stream and of everything per video token."""
    vx, ax = x
    index = shard.index(vx.device)
    total = shard.total
    v_timestep, a_timestep, cross, v_prompt, a_prompt = timestep
    if cross:
        a_ss, v_ss, a2v_gate, v2a_gate = cross
        cross = [a_ss, _slice_timestep(v_ss, index, total, "video cross-attention modulation"),
                 _slice_timestep(a2v_gate, index, total, "audio->video gate"), v2a_gate]
    timestep = [_slice_timestep(v_timestep, index, total, "video timestep modulation"), a_timestep, cross,
                v_prompt, a_prompt]
    (v_pe, v_cross_pe), audio_pe = pe
    pe = [(_slice_pe(v_pe, index, total, "video positional embedding"),
           _slice_pe(v_cross_pe, index, total, "video cross positional embedding")), audio_pe]
    return [vx.index_select(1, index), ax], timestep, pe


# --- the model-call wrapper ----------------------------------------------------------------

class LTXAVSequenceParallel:
    """``DIFFUSION_MODEL`` wrapper: one LTXAVModel evaluation split over ``group``. Holds the
    process group, so it lives on the rank only (never pickled; copies share it)."""

    def __init__(self, group: SequenceGroup) -> None:
        self.group = group
        self.stats = SequenceStats()

    def __deepcopy__(self, memo):
        return self

    def apply(self, model_options: dict) -> dict:
        """A copy of ``model_options`` with this split as the innermost diffusion-model wrapper."""
        return add_wrapper(model_options, self)

    def __call__(self, executor, *args, **kwargs):
        model = executor.class_obj
        if not self.group.active or LTXAVModel is None or not isinstance(model, LTXAVModel):
            return executor(*args, **kwargs)
        if executor.idx != len(executor.wrappers) - 1:
            raise RuntimeError("sequence parallelism must be the innermost diffusion-model wrapper; another wrapper "
                               "was added after it. Run this model with sequence degree 1.")
        call = dict(zip(_FORWARD_ARGS, args))
        call.update(kwargs)
        return self._forward(model, executor, call)

    def _forward(self, model, executor, call: dict):
        """LTXAVModel._forward's steps, with the video stream split around the blocks."""
        x, to = call["x"], call.get("transformer_options") or {}
        kwargs = {k: v for k, v in call.items() if k not in _FORWARD_ARGS}
        denoise_mask = kwargs.pop("denoise_mask", None)
        dtype, batch = x[0].dtype, x[0].shape[0]
        merged = {**to, **kwargs}
        xs, coords, extra = model._process_input(x, call.get("keyframe_idxs"), denoise_mask, **merged)
        merged.update(extra)
        timestep, embedded, prompt_timestep = model._prepare_timestep(call["timestep"], batch, dtype, **merged)
        merged["prompt_timestep"] = prompt_timestep
        context, mask = model._prepare_context(call["context"], batch, xs, call.get("attention_mask"))
        mask = model._prepare_attention_mask(mask, dtype)
        pe = model._prepare_positional_embeddings(coords, call.get("frame_rate", 25), dtype)
        if model._build_guide_self_attention_mask(xs, to, merged) is not None:
            return self._unsplit(executor, call, "a guide self-attention mask (guide attenuation)")
        total = xs[0].shape[1]
        shard = plan_shard(total, self.group.degree, self.group.rank, avoid=(xs[1].shape[1], context[0].shape[1]))
        self.stats.evaluations += 1
        self.stats.padding = shard.padding
        local_x, local_t, local_pe = _split_inputs(xs, timestep, pe, shard)
        block_to = dict(to)
        block_to["optimized_attention_override"] = SequenceAttention(
            shard, self.group, to.get("optimized_attention_override"), self.stats)
        vx, ax = model._process_transformer_blocks(local_x, context, mask, local_t, local_pe,
                                                   transformer_options=block_to, self_attention_mask=None,
                                                   **{k: v for k, v in merged.items() if k != "transformer_options"})
        vx = gather_tokens(vx, shard, self.group)
        return model._process_output([vx, ax], embedded, call.get("keyframe_idxs"), **merged)

    def _unsplit(self, executor, call: dict, reason: str):
        self.stats.unsplit += 1
        if reason not in self.stats.reasons:
            self.stats.reasons.append(reason)
            log.warning("cfg-parallel: sequence split skipped for %s: this evaluation runs whole on each rank.", reason)
        args = [call.get(k) for k in _FORWARD_ARGS]
        kwargs = {k: v for k, v in call.items() if k not in _FORWARD_ARGS}
        return executor(*args, **kwargs)


def with_sequence_parallel(model_options: dict, group: SequenceGroup) -> tuple[dict, LTXAVSequenceParallel | None]:
    """model_options that split every LTXAVModel evaluation over ``group`` (a copy; the
    input is not changed), and the wrapper (for its stats). Degree 1: the options unchanged."""
    if not group.active:
        return model_options, None
    wrapper = LTXAVSequenceParallel(group)
    return add_wrapper(model_options, wrapper), wrapper




def _branch_options(model_options: dict, branch) -> dict:
    """The per-call options of an LTX branch (STG blocks, the modality-isolated pass, a skipped stream)."""
    return branch_model_options(model_options, perturb_blocks=branch.perturb_blocks,
                                perturb_audio_blocks=branch.perturb_audio_blocks,
                                isolate_modalities=branch.isolate_modalities,
                                run_video=branch.run_video, run_audio=branch.run_audio)


# Share of one LTX-2 evaluation that the split divides (the video blocks): 0.26 s of the 0.374 s
# stage-1 evaluation on one H100 (design.md); audio, connectors, modulation and output stay whole.
SPLIT_SHARE = 0.26 / 0.374

FAMILY = ModelFamily(
    name="ltx2", label="LTX-2 audio+video",
    matches=lambda dm: LTXAVModel is not None and isinstance(dm, LTXAVModel),
    make_split=lambda dm, group: LTXAVSequenceParallel(group), split_share=SPLIT_SHARE,
    passes=frozenset({STG, STG_AUDIO, MODALITY}), branch_options=_branch_options, blocks=count_transformer_blocks)
