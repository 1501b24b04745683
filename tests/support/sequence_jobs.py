"""Worker jobs for the sequence-parallel tests: one evaluation of a tiny real LTX-2 model
(ComfyUI's ``LTXAVModel``) split over a sequence group, against the whole evaluation on the
same rank. Run with a WorkerGroup of CPU ranks (gloo); every rank builds the same model
from the same seed, so no weights travel."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .tiny_ltx2 import AUDIO_CHANNELS, AUDIO_FREQ_BINS, AV_CONTEXT_CHANNELS


def ltxav_overrides(video_heads: int) -> dict:
    """Model overrides for a tiny LTX-2 model with ``video_heads`` video heads of 16."""
    return {"num_attention_heads": video_heads, "cross_attention_dim": 16 * video_heads}


@dataclass(frozen=True)
class SplitEvalJob:
    """One LTXAVModel evaluation at sequence degree ``degree`` (world = groups x degree) and
    the same evaluation whole; rank 0 returns both outputs (video, audio) and the stats.

    Latent ``frames x height x width`` (one token each), ``audio_frames`` audio tokens, a
    text of ``text_tokens`` (the last two masked out). ``timestep``: "scalar" (one per
    sample), "per_frame" (per token, constant over a frame: the compressed path) or
    "spatial" (a denoise mask that varies inside a frame: per-token modulation)."""

    degree: int
    frames: int = 3
    height: int = 2
    width: int = 3
    audio_frames: int = 7
    text_tokens: int = 8
    video_heads: int = 2
    batch: int = 2
    timestep: str = "scalar"
    seed: int = 0
    stg: str = ""  # "direct" / "override": the pack's STG patch on block 1 (both streams), that route

    def options(self) -> dict:
        """transformer_options of both evaluations (the STG patch when asked for)."""
        if not self.stg:
            return {}
        from cfg_runtime.adapters.families.ltx_stg import PerturbedBlock

        patch = PerturbedBlock(1, via_override=self.stg == "override")
        return {"patches_replace": {"dit": {("double_block", 1): patch}}}

    def inputs(self) -> dict:
        gen = torch.Generator().manual_seed(self.seed + 1)
        b = self.batch
        vx = torch.randn(b, 128, self.frames, self.height, self.width, generator=gen)
        ax = torch.randn(b, AUDIO_CHANNELS, self.audio_frames, AUDIO_FREQ_BINS, generator=gen)
        context = torch.randn(b, self.text_tokens, AV_CONTEXT_CHANNELS, generator=gen)
        mask = torch.ones(b, self.text_tokens, dtype=torch.long)
        mask[:, -2:] = 0
        sigma = torch.tensor([0.8, 0.55][:b])
        call = {"x": [vx, ax], "context": context, "attention_mask": mask, "frame_rate": 25}
        if self.timestep == "scalar":
            call["timestep"] = (sigma, sigma)
        else:
            shape = (b, 1, self.frames, self.height, self.width)
            if self.timestep == "per_frame":
                dmask = torch.linspace(0.2, 1.0, self.frames).view(1, 1, -1, 1, 1).expand(shape).clone()
            else:
                dmask = torch.rand(shape, generator=gen)
            v_t = (dmask * sigma.view(b, 1, 1, 1, 1)).reshape(b, -1, 1)  # what LTXAV.process_timestep gives
            call["timestep"] = (v_t, sigma)
            if self.timestep == "spatial":
                call["denoise_mask"] = dmask
        return call

    def run(self, ctx):
        from cfg_runtime.adapters.families.ltx2 import with_sequence_parallel
        from cfg_runtime.parallel.sequence import cached_sequence_group

        from .tiny_ltx2 import tiny_ltxav_module

        model = tiny_ltxav_module(self.seed, **ltxav_overrides(self.video_heads))
        group = cached_sequence_group(ctx.cache, ctx.rank, ctx.world_size, self.degree)
        options, wrapper = with_sequence_parallel({"transformer_options": self.options()}, group)
        whole = _outputs(model(**self.inputs(), transformer_options=self.options()))
        split = _outputs(model(**self.inputs(), transformer_options=options["transformer_options"]))
        stats = vars(wrapper.stats) if wrapper is not None else {}
        ctx.summary.update({"sequence": dict(stats), "split_digest": digest(split)})
        return {"whole": whole, "split": split, "stats": dict(stats)} if ctx.rank == 0 else None


def _outputs(out) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach().clone() for t in out) if isinstance(out, (list, tuple)) else (out.detach().clone(),)


def digest(tensors) -> str:
    """sha256 of the tensors' bytes: equal digests = the same bits."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def error_figures(whole: tuple, split: tuple) -> dict:
    """Max abs difference and relative L2 error, per output stream (fp32)."""
    figures = {}
    for name, a, b in zip(("video", "audio"), whole, split):
        diff = (b.double() - a.double())
        figures[name] = {"max_abs": float(diff.abs().max()),
                         "rel_l2": float(diff.norm() / a.double().norm().clamp_min(1e-30))}
    return figures


@dataclass(frozen=True)
class LTXVSplitEvalJob:
    """One LTX-Video (``LTXVModel``, 2 blocks of 2 heads x 16) evaluation split over
    ``degree`` ranks against the whole one; per-token timesteps when ``per_token``."""

    degree: int
    frames: int = 3
    height: int = 2
    width: int = 3
    text_tokens: int = 8
    batch: int = 2
    per_token: bool = False
    seed: int = 0

    def run(self, ctx):
        from cfg_runtime.adapters.families import family_of
        from cfg_runtime.parallel.sequence import cached_sequence_group

        from devkit.tiny_models import tiny_ltxv_module

        model = tiny_ltxv_module(self.seed, std=0.2)
        group = cached_sequence_group(ctx.cache, ctx.rank, ctx.world_size, self.degree)
        split = family_of(model).make_split(model, group)
        gen = torch.Generator().manual_seed(self.seed + 1)
        b, tokens = self.batch, self.frames * self.height * self.width
        x = torch.randn(b, 128, self.frames, self.height, self.width, generator=gen)
        context = torch.randn(b, self.text_tokens, 32, generator=gen)
        mask = torch.ones(b, self.text_tokens, dtype=torch.long)
        mask[:, -3:] = 0
        timestep = torch.rand(b, tokens, generator=gen) if self.per_token else torch.tensor([0.7, 0.4][:b])
        call = dict(x=x, timestep=timestep, context=context, attention_mask=mask, frame_rate=25)
        whole = _outputs(model(**call, transformer_options={}))
        split_out = _outputs(model(**call, **split.apply({"transformer_options": {}})))
        stats = vars(split.stats).copy()
        ctx.summary.update({"sequence": stats, "split_digest": digest(split_out)})
        return {"whole": whole, "split": split_out, "stats": stats} if ctx.rank == 0 else None
