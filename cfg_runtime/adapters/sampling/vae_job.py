"""Rank side of a group VAE decode: decode this rank's share of ComfyUI's tiles, collect them on rank 0.

Each tile is the very tensor ComfyUI's tiled decode hands to ``first_stage_model.decode`` (its
slice of the latent, already in the VAE's dtype); the rank decodes it with the same module on
its own device and returns the raw output. The blend happens in the ComfyUI process
(``group_vae.py``), with ComfyUI's own tiling code. The VAE is held like a diffusion model
(``ModelCache``: one host copy in shared memory, kept between prompts within the budget).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...parallel.collect import gather_to_first, share
from ..models.model_cache import ModelCache
from .sample_job import MissingModel, _all_hold
from ..models.transport import ModelShipment


@dataclass(frozen=True)
class VaeDecodeJob:
    """Decode `tiles` (CPU tensors, in order) with the shipped VAE module; rank 0 returns {index: output}."""

    shipment: ModelShipment
    tiles: tuple
    memory_required: float = 0.0  # bytes ComfyUI would reserve for the largest tile
    full_load: bool = False  # the VAE's disable_offload (ComfyUI's force_full_load)
    released: tuple[str, ...] = ()

    def run(self, ctx):
        import comfy.model_management as mm

        cache = ModelCache(ctx.cache)
        cache.release(self.released)
        if self.shipment.base_model is None and not _all_hold(ctx, cache.holds(self.shipment.base_token)):
            ctx.summary.update(resident_model=None, **cache.report())
            return MissingModel(self.shipment.base_token) if ctx.rank == 0 else None
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        t0 = time.monotonic()
        patcher, _ = cache.patcher_for(self.shipment, ctx.device)
        mm.load_models_gpu([patcher], memory_required=self.memory_required, force_full_load=self.full_load)
        load_s = time.monotonic() - t0
        mine = share(len(self.tiles), ctx.rank, ctx.world_size)
        outputs, t1 = {}, time.monotonic()
        for done, index in enumerate(mine, 1):
            out = patcher.model.decode(self.tiles[index].to(ctx.device))
            outputs[index] = out.to("cpu")
            ctx.phase(f"decoded tile {index + 1} of {len(self.tiles)}", done, len(mine))
        decode_s = time.monotonic() - t1
        cache.settle_pins()
        ctx.summary.update(tiles=len(mine), vae_load_s=round(load_s, 3), decode_s=round(decode_s, 3),
                           resident_model=self.shipment.base_token, **cache.report())
        if ctx.device.type == "cuda":
            ctx.summary["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
        gathered = gather_to_first(outputs, ctx.rank, ctx.world_size)
        if ctx.rank != 0:
            return None
        return {k: v for part in gathered for k, v in part.items()}
