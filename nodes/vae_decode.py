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


def _tile_inputs() -> list:
    widgets = _core_widgets()
    inputs = []
    for name in TILE_WIDGETS:
        options = {k: v for k, v in widgets[name].items() if k in _INT_ARGS}
        options.setdefault("tooltip", "As in VAE Decode (Tiled).")
        inputs.append(io.Int.Input(name, **options))
    return inputs


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
