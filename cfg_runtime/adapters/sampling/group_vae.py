"""Parent side of the group VAE decode: ComfyUI's own tiled decode, with the tiles decoded by the ranks.

Two passes through core's ``VAEDecodeTiled`` (its parameter rules, ``VAE.decode_tiled`` and the
tiling and blending of ``comfy.utils``, whatever this ComfyUI's version of them is), each with a
copy of the VAE whose ``first_stage_model.decode`` is substituted:

1. enumerate: the substitute records every tile ComfyUI hands it, in order, and answers with
   zeros; nothing is decoded. The stand-in of this pass scales by 1 (its compression, which sets
   the tile sizes, stays the VAE's): the tiles ComfyUI cuts depend only on the latent, so it cuts
   the same ones while its blend handles a latent-sized image instead of the full one;
2. the ranks decode those tiles (round robin) with the VAE's module on their devices, each
   writing its outputs straight into one block of shared memory this process allocated
   (``vae_job.TileOutputs``: a slot per tile, sized by the VAE's upscale rule);
3. replay: the substitute checks each tile is the recorded one and returns the rank's output,
   so ComfyUI's code blends the very tiles it would have decoded itself, in its serial order.

Each tile's decode is the same module on the same input in the same dtype, and the blend is
ComfyUI's own code in this process: the image equals ``VAEDecodeTiled`` with the same settings
bit for bit (on ranks of the same device type as ComfyUI's VAE device). With a CUDA VAE device
and room on it, the replay blends there (ComfyUI's code, output device set to the GPU) and moves
the image to ComfyUI's output device: the blend is elementwise float32 multiply, add and divide,
correctly rounded on both, so the bits are the same as a CPU blend (the GPU bench checks it).
"""
from __future__ import annotations

import copy
import importlib
import logging
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.utils

from ...errors import CFGParallelError, JobInterrupted, ShippingError
from ...group import JobResult, get_group
from ...group.shipping import check_shippable
from .group_sampling import _record_residency, resident_models
from .progress_text import ProgressText
from .sample_job import MissingModel
from ..models.transport import RELEASED, ModelShipment, base_token, release_from_comfy, route_weights
from .vae_job import DecodedTiles, TileOutputs, VaeDecodeJob

log = logging.getLogger("cfg_parallel")


class VaeDecodeError(CFGParallelError, ValueError):
    """The VAE or the latent cannot be decoded on the group."""


@dataclass(frozen=True)
class TileSettings:
    """The widgets of core VAEDecodeTiled, passed to it unchanged."""

    tile_size: int = 512
    overlap: int = 64
    temporal_size: int = 64
    temporal_overlap: int = 8


def _core_tiled_node():
    """ComfyUI's own VAEDecodeTiled (nodes.py; the pack's package of the same name is never top-level)."""
    module = sys.modules.get("nodes")
    if module is None or not hasattr(module, "VAEDecodeTiled"):
        module = importlib.import_module("nodes")
    return module.VAEDecodeTiled()


def check_decoder(vae) -> None:
    """Refuse a VAE input that holds no image or video VAE (what the latent does not tell)."""
    if vae is None or getattr(vae, "first_stage_model", None) is None:
        raise VaeDecodeError("The VAE input holds no VAE (a checkpoint without one?): load a VAE with VAELoader.")
    if getattr(vae, "extra_1d_channel", None) is not None:
        raise VaeDecodeError("Only image and video VAEs decode on the group; decode audio with VAEDecodeAudio.")


def check_vae(vae, samples: dict) -> None:
    """Refuse what the group decode cannot do, with what to do instead."""
    check_decoder(vae)
    latent = samples.get("samples") if isinstance(samples, dict) else None
    if not isinstance(latent, torch.Tensor):
        raise VaeDecodeError("The samples input is not a LATENT with a 'samples' tensor.")
    if getattr(latent, "is_nested", False):
        raise VaeDecodeError("The latent holds several parts (audio+video): split it with LTXVSeparateAVLatent and "
                             "decode the video part; audio VAEs decode in ComfyUI (VAEDecodeAudio).")
    if latent.ndim not in (4, 5):
        raise VaeDecodeError("Only image and video VAEs decode on the group; decode audio with VAEDecodeAudio.")
    if getattr(vae, "handles_tiling", False):
        raise VaeDecodeError(f"{type(vae.first_stage_model).__name__} tiles inside its own decoder, so ComfyUI "
                             f"hands it no tiles to spread: use VAEDecodeTiled.")


def _scaled(rule, index: int, value: int) -> int:
    rule = rule[index] if isinstance(rule, (tuple, list)) else rule
    return round(rule(value) if callable(rule) else rule * value)


class _TileSource(torch.nn.Module):
    """Stands in for ``first_stage_model``: records tiles (enumerate) or returns decoded ones (replay)."""

    def __init__(self, outputs: dict | None = None, tiles: list | None = None) -> None:
        super().__init__()
        self.outputs = outputs
        self.tiles = [] if tiles is None else tiles
        self.calls = 0

    def decode(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        index, self.calls = self.calls, self.calls + 1
        if self.outputs is None:  # the enumerate stand-in scales by 1: zeros of the tile's own shape
            self.tiles.append(x.detach().to("cpu", copy=True).contiguous())
            return x.new_zeros((x.shape[0], 1) + tuple(x.shape[2:]))
        if index >= len(self.tiles) or not torch.equal(self.tiles[index], x.detach().to("cpu")):
            raise VaeDecodeError(f"ComfyUI's tiled decode asked for tile {index + 1} differently the second time; "
                                 f"decode with VAEDecodeTiled.")
        return self.outputs[index].to(x.device)


_NO_WEIGHTS: dict = {}  # device -> a patcher of an empty module: ComfyUI "loads" it instead of the VAE


def _stand_in(vae, source: _TileSource, geometry_only: bool = False, output_device=None):
    """A copy of the VAE that decodes through `source` and loads nothing onto ComfyUI's device.
    geometry_only: it scales by 1 (tile sizes still from the VAE's compression); output_device:
    where ComfyUI's tiling blends (default: the VAE's own output device)."""
    proxy = copy.copy(vae)
    proxy.first_stage_model = source
    key = str(vae.device)
    if key not in _NO_WEIGHTS:
        _NO_WEIGHTS[key] = comfy.model_patcher.ModelPatcher(torch.nn.Module(), load_device=vae.device,
                                                            offload_device=torch.device("cpu"))
    proxy.patcher = _NO_WEIGHTS[key]
    proxy.memory_used_decode = lambda shape, dtype: 0
    if geometry_only:
        proxy.spacial_compression_decode = vae.spacial_compression_decode
        proxy.temporal_compression_decode = vae.temporal_compression_decode
        proxy.upscale_ratio = 1
        proxy.upscale_index_formula = None
        proxy.output_channels = 1
    if output_device is not None:
        proxy.output_device = output_device
    return proxy


def _core_decode(proxy, samples: dict, tiles: TileSettings) -> torch.Tensor:
    return _core_tiled_node().decode(proxy, samples, tiles.tile_size, tiles.overlap,
                                     tiles.temporal_size, tiles.temporal_overlap)[0]


def enumerate_tiles(vae, samples: dict, tiles: TileSettings) -> list[torch.Tensor]:
    """The inputs ComfyUI's tiled decode gives the decoder, in its order (its progress bar stays still)."""
    hook = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.PROGRESS_BAR_HOOK = None
    try:
        source = _TileSource()
        _core_decode(_stand_in(vae, source, geometry_only=True), samples, tiles)
    finally:
        comfy.utils.PROGRESS_BAR_HOOK = hook
    return source.tiles


def blend_device(vae, samples: dict, outputs: dict) -> torch.device:
    """Where the replay blends: the VAE's CUDA device when it has room for the image, its blend
    weights and a tile twice over; else ComfyUI's output device for the VAE (as VAEDecodeTiled)."""
    device = torch.device(vae.device)
    if device.type != "cuda" or not outputs:
        return torch.device(vae.output_device)
    tile = max(v.numel() for v in outputs.values())
    channels = max(1, int(getattr(vae, "output_channels", 3)))
    need = 4 * (_output_pixels(vae, samples) * (2 * channels + 1) + 4 * tile)  # float32: image, weights, clamp
    if comfy.model_management.get_free_memory(device) < need * 1.2:
        return torch.device(vae.output_device)
    return device


def _output_pixels(vae, samples: dict) -> int:
    """Pixels (per channel) of the decoded image, from the VAE's upscale rule."""
    latent = samples["samples"]
    count = latent.shape[0]
    for d, n in enumerate(latent.shape[2:]):
        count *= max(1, _scaled(vae.upscale_ratio, d, n))
    return count


def blend(vae, samples: dict, tiles: TileSettings, inputs: list, outputs: dict) -> torch.Tensor:
    """ComfyUI's tiled decode again, its decoder answering with the decoded tiles; on the device
    `blend_device` picks, the image on ComfyUI's output device for the VAE."""
    device = blend_device(vae, samples, outputs)
    images = _core_decode(_stand_in(vae, _TileSource(outputs=outputs, tiles=inputs), output_device=device),
                          samples, tiles)
    return images.to(vae.output_device)


_COPIES: dict = {}  # token -> a plain copy of a VAE module that cannot itself travel (one entry)


def _plain_copy(vae, token: str) -> torch.nn.Module:
    """A plain CPU copy of the VAE's module, once per VAE: for a VAE under ComfyUI's dynamic VRAM,
    whose weights alias the memory-mapped file (they cannot move to shared memory)."""
    if token not in _COPIES:
        _COPIES.clear()
        with torch.no_grad():
            module = copy.deepcopy(vae.first_stage_model).to("cpu")
        try:
            check_shippable(module)
        except Exception as exc:
            raise ShippingError(f"The VAE cannot be sent to the worker processes ({type(exc).__name__}: {exc}); "
                                f"decode with VAEDecodeTiled, or start ComfyUI with --disable-dynamic-vram.") from None
        _COPIES[token] = module
        log.info("cfg-parallel: made a plain copy of the VAE for the ranks (%s)", type(module).__name__)
    return _COPIES[token]


def _with_vae(job: VaeDecodeJob, vae, copied: bool) -> VaeDecodeJob:
    """The job carrying the VAE module: one host copy in shared memory that every rank maps (the
    module ComfyUI holds, or `copied`: a plain copy of it)."""
    if copied:
        module = _plain_copy(vae, job.shipment.base_token)
    else:
        release_from_comfy(vae.patcher)  # off ComfyUI's GPU, unpatched
        module = vae.first_stage_model
        if any(p.device.type != "cpu" for p in module.parameters()):
            module.to("cpu")
    return replace(job, shipment=replace(job.shipment, base_model=module))


def vae_route(vae, devices: tuple[str, ...]) -> tuple[str, bool]:
    """(token, copied): the VAE's identity for the ranks, and whether they get a plain copy of its module
    (ComfyUI's dynamic VRAM manages it) rather than the module itself. ShippingError if neither travels."""
    try:
        return route_weights(vae.patcher, devices).token, False
    except ShippingError as exc:
        if not getattr(vae.patcher, "is_dynamic", lambda: False)():
            raise ShippingError(f"The VAE cannot be sent to the worker processes: {exc}") from None
    return base_token(vae.patcher), True


def _run(group, job: VaeDecodeJob, vae, copied: bool, on_phase, interrupted) -> JobResult:
    """Run the job, sending the VAE only to ranks that lack it (as for diffusion models)."""
    if job.shipment.base_token not in resident_models(group):
        job = _with_vae(job, vae, copied)
    result = group.run(job, interrupt_requested=interrupted, on_phase=on_phase)
    if isinstance(result.value, MissingModel):
        result = group.run(_with_vae(job, vae, copied), interrupt_requested=interrupted, on_phase=on_phase)
    _record_residency(group, result)
    return result


def _tile_output_shape(vae, tile: torch.Tensor) -> tuple[int, ...]:
    """The decoded tile's shape by the VAE's upscale rule (the one ComfyUI's tiling sizes its image by)."""
    return (tile.shape[0], int(vae.output_channels)) + tuple(_scaled(vae.upscale_ratio, d, n)
                                                             for d, n in enumerate(tile.shape[2:]))


def _job(vae, inputs: list, token: str) -> VaeDecodeJob:
    memory = max(vae.memory_used_decode(t.shape, vae.vae_dtype) for t in inputs)
    shipment = ModelShipment(base_token=token, base_model=None, patches_token="vae", patches={},
                             object_patches={}, model_options=copy.deepcopy(vae.patcher.model_options))
    into = TileOutputs.allocate([_tile_output_shape(vae, t) for t in inputs], vae.vae_dtype)
    return VaeDecodeJob(shipment, tuple(inputs), float(memory), bool(getattr(vae, "disable_offload", False)),
                        tuple(sorted(RELEASED)), into)


def decoded_outputs(job: VaeDecodeJob, value) -> dict[int, torch.Tensor]:
    """{tile index: decoded output} from rank 0's answer to `job`."""
    if not isinstance(value, DecodedTiles):
        raise VaeDecodeError(f"The ranks answered the VAE decode with {type(value).__name__}; decode with "
                             f"VAEDecodeTiled.")
    return value.outputs(job.into)


def _tile_progress(total: int, text: ProgressText) -> Callable:
    bar = comfy.utils.ProgressBar(total)

    def on_phase(phase) -> None:
        text(phase)
        if phase.text.startswith("decoded tile"):
            bar.update(1)
    return on_phase


def decode_on_group(vae, samples: dict, tiles: TileSettings, settings) -> tuple[torch.Tensor, JobResult]:
    """The images of core VAEDecodeTiled(vae, samples, *tiles), with the tiles decoded on the group."""
    check_vae(vae, samples)
    spec = settings.group_spec()
    token, copied = vae_route(vae, spec.devices)
    inputs = enumerate_tiles(vae, samples, tiles)
    job = _job(vae, inputs, token)
    interrupted = comfy.model_management.processing_interrupted
    text = ProgressText(spec.world_size)
    try:
        group = get_group(spec, interrupt_requested=interrupted, on_phase=text)
        result = _run(group, job, vae, copied, _tile_progress(len(inputs), text), interrupted)
    except JobInterrupted:
        raise comfy.model_management.InterruptProcessingException()
    images = blend(vae, samples, tiles, inputs, decoded_outputs(job, result.value))
    text.show(f"cfg-parallel: decoded {len(inputs)} tiles on {spec.world_size} ranks in {result.seconds:.1f} s")
    log.info("cfg-parallel: VAE decode of %d tiles on %d ranks in %.1f s", len(inputs), spec.world_size,
             result.seconds)
    return images, result


def decode_tiled(vae, samples: dict, tiles: TileSettings, settings) -> torch.Tensor:
    """The images of core VAEDecodeTiled(vae, samples, *tiles): on the group at parallel size 2 or more,
    at size 1 core's node itself in this process (the same result; no worker process for one rank)."""
    if settings.world_size <= 1:
        return _core_tiled_node().decode(vae, samples, tiles.tile_size, tiles.overlap, tiles.temporal_size,
                                         tiles.temporal_overlap)[0]
    return decode_on_group(vae, samples, tiles, settings)[0]
