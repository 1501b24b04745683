"""Rank side of a group VAE decode: decode this rank's share of ComfyUI's tiles into the ComfyUI process's block.

Each tile is the very tensor ComfyUI's tiled decode hands to ``first_stage_model.decode`` (its
slice of the latent, already in the VAE's dtype); the rank decodes it with the same module on
its own device and copies the raw output into its slot of one block of shared memory that the
ComfyUI process allocated (``TileOutputs``): every rank writes its own tiles there directly, so
no decoded tile is pickled, gathered on rank 0 or sent back through a pipe. An output whose
dtype or shape is not the slot's travels the old way (gathered on rank 0, returned in the
result). The blend happens in the ComfyUI process
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
class TileOutputs:
    """One block of shared memory for every decoded tile: `block` is flat, in the decoder's output
    dtype; `slots[i]` is tile i's (element offset, shape)."""

    block: torch.Tensor
    slots: tuple[tuple[int, tuple[int, ...]], ...]

    @classmethod
    def allocate(cls, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> "TileOutputs":
        slots, total = [], 0
        for shape in shapes:
            slots.append((total, tuple(int(n) for n in shape)))
            total += int(torch.Size(shape).numel())
        storage = torch.UntypedStorage._new_shared(max(1, total) * torch.empty(0, dtype=dtype).element_size())
        return cls(torch.empty(0, dtype=dtype).set_(storage, 0, (total,), (1,)), tuple(slots))

    def view(self, index: int) -> torch.Tensor:
        offset, shape = self.slots[index]
        return self.block[offset:offset + torch.Size(shape).numel()].view(shape)

    def fits(self, index: int, output: torch.Tensor) -> bool:
        return output.dtype == self.block.dtype and tuple(output.shape) == self.slots[index][1]


@dataclass(frozen=True)
class DecodedTiles:
    """Rank 0's answer: the tiles written into the block, and the outputs that did not fit a slot."""

    in_block: tuple[int, ...]
    loose: dict

    def outputs(self, into: TileOutputs | None) -> dict[int, torch.Tensor]:
        """{tile index: decoded output}, views of the block where the ranks wrote it."""
        found = dict(self.loose)
        if into is not None:
            found.update({i: into.view(i) for i in self.in_block})
        return found


@dataclass(frozen=True)
class VaeDecodeJob:
    """Decode `tiles` (CPU tensors, in order) with the shipped VAE module into `into`; rank 0 returns
    a DecodedTiles."""

    shipment: ModelShipment
    tiles: tuple
    memory_required: float = 0.0  # bytes ComfyUI would reserve for the largest tile
    full_load: bool = False  # the VAE's disable_offload (ComfyUI's force_full_load)
    released: tuple[str, ...] = ()
    into: TileOutputs | None = None

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
        written, loose, t1 = [], {}, time.monotonic()
        for done, index in enumerate(mine, 1):
            out = patcher.model.decode(self.tiles[index].to(ctx.device))
            if self.into is not None and self.into.fits(index, out):
                self.into.view(index).copy_(out)  # synchronous: the bytes are in place when the rank reports
                written.append(index)
            else:
                loose[index] = out.to("cpu")
            ctx.phase(f"decoded tile {index + 1} of {len(self.tiles)}", done, len(mine))
        decode_s = time.monotonic() - t1
        cache.settle_pins()
        ctx.summary.update(tiles=len(mine), tiles_returned_apart=len(loose), vae_load_s=round(load_s, 3), decode_s=round(decode_s, 3),
                           resident_model=self.shipment.base_token, **cache.report())
        if ctx.device.type == "cuda":
            ctx.summary["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
        gathered = gather_to_first((written, loose), ctx.rank, ctx.world_size)
        if ctx.rank != 0:
            return None
        return DecodedTiles(tuple(sorted(i for part, _ in gathered for i in part)),
                            {k: v for _, part in gathered for k, v in part.items()})
