"""VAE Decode (Multi-GPU) through a real ComfyUI server: the group decode equals core
VAEDecodeTiled with the same settings bit for bit, at 1, 2 and 3 CPU ranks, for a tile count
(5) that no rank count above 1 divides, on a video VAE (Wan 2.1) and an image VAE (TAESD;
and on 0.29 and later the Flux-style AutoencodingEngine decoder)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devkit.tiny_vaes import build_tiny_image_vae, build_tiny_taesd, build_tiny_wan21_vae
from support.paths import NEEDS_029, comfyui_version

pytestmark = pytest.mark.server

TILES = {"tile_size": 64, "overlap": 16, "temporal_size": 8, "temporal_overlap": 4}
# latent (channels, frames, height, width) -> 5 tiles: video 5 in time (2 latent frames, 1 overlap);
# image: VAEDecodeTiled's three tilings of a 6x6 latent (2 + 2 + 1)
VAES = {"wan21": (16, 6, 4, 4), "taesd": (16, 0, 6, 6), "flux_style": (16, 0, 6, 6)}
BUILDERS = {"wan21": lambda p: build_tiny_wan21_vae(p, dim=4), "taesd": build_tiny_taesd,
            "flux_style": build_tiny_image_vae}
SIZES = (1, 2, 3)


def _graph(vae_name: str, shape: tuple, seed: int) -> dict:
    channels, frames, height, width = shape
    g = {"vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
         "lat": {"class_type": "CFGPTestLatent", "inputs": {"seed": seed, "batch": 1, "channels": channels,
                                                          "frames": frames, "height": height, "width": width}},
         "ref": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["lat", 0], "vae": ["vae", 0], **TILES}},
         "save_ref": {"class_type": "CFGPTestSaveTensor", "inputs": {"images": ["ref", 0], "filename_prefix": "ref"}}}
    for size in SIZES:
        g[f"group{size}"] = {"class_type": "CFGParallelMultiGPU_VAEDecode", "inputs": {
            "samples": ["lat", 0], "vae": ["vae", 0], **TILES, "parallel_size": size, "devices": "cpu"}}
        g[f"save{size}"] = {"class_type": "CFGPTestSaveTensor",
                            "inputs": {"images": [f"group{size}", 0], "filename_prefix": f"group{size}"}}
    return g


def _saved(server, entry: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    (name,) = entry["outputs"][node]["tensors"]
    return load_file(str(Path(server.output_dir) / name))["images"]


def _tile_count(path: Path, shape: tuple) -> int:
    """How many tiles ComfyUI's tiled decode makes of this latent (the first pass; nothing decoded)."""
    import comfy.sd
    import comfy.utils

    from cfg_runtime.adapters.group_vae import TileSettings, enumerate_tiles

    channels, frames, height, width = shape
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    latent = torch.zeros((1, channels) + ((frames,) if frames else ()) + (height, width))
    with torch.inference_mode():  # as ComfyUI runs nodes
        return len(enumerate_tiles(vae, {"samples": latent}, TileSettings(**TILES)))


@pytest.mark.parametrize("kind", sorted(VAES))
def test_group_decode_equals_vae_decode_tiled(comfy_server, tiny_model_dir, kind):
    if kind == "flux_style" and comfyui_version().startswith("0.3."):
        pytest.skip(f"{NEEDS_029} ComfyUI 0.3.75 builds the SD/Flux decoder at its full width only")
    path = BUILDERS[kind](tiny_model_dir / f"tiny_vae_{kind}.safetensors")
    comfy_server.add_model("vae", path.name, path)
    count = _tile_count(path, VAES[kind])
    assert count == 5 and all(count % n for n in SIZES[1:]), count
    entry = comfy_server.run(_graph(path.name, VAES[kind], seed=3), timeout=600)
    ref = _saved(comfy_server, entry, "save_ref")
    assert ref.dtype == torch.float32 and ref.std() > 0.01
    for size in SIZES:
        got = _saved(comfy_server, entry, f"save{size}")
        assert got.shape == ref.shape and torch.equal(got, ref), f"{kind} at {size} ranks differs"
