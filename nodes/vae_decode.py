"""VAE Decode (Multi-GPU): core VAEDecodeTiled, with its tiles decoded on the worker group."""
from __future__ import annotations

import inspect
import sys

from comfy_api.latest import io

from cfg_runtime.adapters.sampling.group_vae import TileSettings, decode_on_group
from cfg_runtime.adapters.sampling.guider import ParallelSettings

from .common import ALIASES_COMMON, PREFIX, schema
from .guider import DEVICES_TIP

NODE_ID = PREFIX + "VAEDecode"
TILE_WIDGETS = ("tile_size", "overlap", "temporal_size", "temporal_overlap")
# Core VAEDecodeTiled's widgets in ComfyUI 0.3.75, used only where core's node cannot be read.
_FALLBACK = {"tile_size": {"default": 512, "min": 64, "max": 4096, "step": 32},
             "overlap": {"default": 64, "min": 0, "max": 4096, "step": 32},
             "temporal_size": {"default": 64, "min": 8, "max": 4096, "step": 4},
             "temporal_overlap": {"default": 8, "min": 4, "max": 4096, "step": 4}}
_INT_ARGS = set(inspect.signature(io.Int.Input.__init__).parameters)


def _core_widgets() -> dict:
    """The tile widgets of this ComfyUI's own VAEDecodeTiled (defaults, limits, tooltips)."""
    core = sys.modules.get("nodes")
    try:
        required = core.NODE_CLASS_MAPPINGS["VAEDecodeTiled"].INPUT_TYPES()["required"]
        return {name: dict(required[name][1]) for name in TILE_WIDGETS}
    except Exception:  # ComfyUI's nodes.py not loaded (unit tests)
        return _FALLBACK


def _tile_inputs(optional: bool = False, note: str = "") -> list:
    """Core VAEDecodeTiled's tile widgets (its defaults and limits); `note` leads each tooltip."""
    widgets = _core_widgets()
    inputs = []
    for name in TILE_WIDGETS:
        options = {k: v for k, v in widgets[name].items() if k in _INT_ARGS}
        options["tooltip"] = note + options.get("tooltip", "As in VAE Decode (Tiled).")
        inputs.append(io.Int.Input(name, optional=optional, **options))
    return inputs


def decode_inputs() -> list:
    """The LTX2 Sampler's decode option: a switch, then VAEDecodeTiled's tile widgets."""
    return [io.Combo.Input("decode", options=["off", "on"], default="off", optional=True, tooltip=(
                "on: after sampling, decode the final video latent with the vae input as VAE Decode (Tiled) does "
                "with the tile settings below (the same images, bit for bit), its tiles spread over the worker "
                "group (parallel_size 1: in ComfyUI). The audio stays a latent: LTXVSeparateAVLatent + the audio "
                "VAE decode it. off: no decode; the images output is then empty.")),
            *_tile_inputs(optional=True, note="With decode on. ")]


def tile_settings(decode: str, tile_size: int, overlap: int, temporal_size: int,
                  temporal_overlap: int) -> TileSettings | None:
    """The decode option's widgets as TileSettings, or None with decode off."""
    return TileSettings(tile_size, overlap, temporal_size, temporal_overlap) if decode == "on" else None


class VAEDecodeMultiGPU(io.ComfyNode):
    """LATENT + VAE -> IMAGE: VAEDecodeTiled's result, bit for bit, with the tiles spread over the ranks."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=NODE_ID,
            display_name="VAE Decode (Multi-GPU)",
            category="latent",
            description=("Decodes like VAE Decode (Tiled) with the same settings, bit for bit, but the tiles are "
                         "decoded at the same time on the worker group's ranks (one per GPU) and blended here in "
                         "ComfyUI's order. Image and video VAEs (SD, SDXL, Flux, Qwen-Image, Wan, LTX-Video, LTX-2). "
                         "Use the sampler's parallel_size and devices, so the running group is reused."),
            search_aliases=ALIASES_COMMON + ["vae decode", "decode", "tiled", "vae"],
            inputs=[
                io.Latent.Input("samples", tooltip="The latent to decode (a video latent: the video part only)."),
                io.Vae.Input("vae", tooltip="The VAE to decode with (the workers load it once and keep it between prompts)."),
                *_tile_inputs(),
                io.Int.Input("parallel_size", default=2, min=1, max=64, tooltip=(
                    "Worker processes, one per device; each decodes every N-th tile. Give the sampler's value: "
                    "another size restarts the group (and the models it holds).")),
                io.String.Input("devices", default="", tooltip=DEVICES_TIP),
            ],
            outputs=[io.Image.Output(tooltip="The decoded images: equal to VAE Decode (Tiled) with the same settings.")],
        )

    @classmethod
    def execute(cls, samples, vae, tile_size, overlap, temporal_size, temporal_overlap, parallel_size,
                devices) -> io.NodeOutput:
        settings = ParallelSettings(world_size=parallel_size, devices=devices)
        images, _ = decode_on_group(vae, samples, TileSettings(tile_size, overlap, temporal_size, temporal_overlap),
                                    settings)
        return io.NodeOutput(images)


NODES = [VAEDecodeMultiGPU]
