"""VAE Decode (Multi-GPU) through a real ComfyUI server: the group decode equals core
VAEDecodeTiled with the same settings bit for bit, at 1, 2 and 3 CPU ranks, for a tile count
(5) that no rank count above 1 divides, on a video VAE (Wan 2.1) and an image VAE (TAESD;
and on 0.29 and later the Flux-style AutoencodingEngine decoder)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devkit.tiny_vaes import build_tiny_image_vae, build_tiny_taesd, build_tiny_wan21_vae
from support.paths import comfyui_version

pytestmark = pytest.mark.server

TILES = {"tile_size": 64, "overlap": 16, "temporal_size": 8, "temporal_overlap": 4}
# latent (channels, frames, height, width) -> 5 tiles: video 5 in time (2 latent frames, 1 overlap);
# image: VAEDecodeTiled's three tilings of a 6x6 latent (2 + 2 + 1)
VAES = {"wan21": (16, 6, 4, 4), "taesd": (16, 0, 6, 6), "flux_style": (16, 0, 6, 6)}
BUILDERS = {"wan21": lambda p: build_tiny_wan21_vae(p, dim=4), "taesd": build_tiny_taesd,
            "flux_style": build_tiny_image_vae}
SIZES = (1, 2, 3)


def _graph(kinds: dict, size: int, seed: int) -> dict:
    """One prompt: for every VAE, its latent, core VAEDecodeTiled and the group decode at `size` ranks
    (one group start per size for all the VAEs)."""
    g = {}
    for kind, vae_name in kinds.items():
        channels, frames, height, width = VAES[kind]
        g[f"{kind}_vae"] = {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}}
        g[f"{kind}_lat"] = {"class_type": "CFGPTestLatent", "inputs": {
            "seed": seed, "batch": 1, "channels": channels, "frames": frames, "height": height, "width": width}}
        pair = {"samples": [f"{kind}_lat", 0], "vae": [f"{kind}_vae", 0], **TILES}
        g[f"{kind}_ref"] = {"class_type": "VAEDecodeTiled", "inputs": pair}
        g[f"{kind}_group"] = {"class_type": "CFGParallelMultiGPU_VAEDecode",
                              "inputs": {**pair, "parallel_size": size, "devices": "cpu"}}
        for what in ("ref", "group"):
            g[f"{kind}_save_{what}"] = {"class_type": "CFGPTestSaveTensor", "inputs": {
                "images": [f"{kind}_{what}", 0], "filename_prefix": f"{kind}_{what}{size}"}}
    return g


def _saved(server, entry: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    (name,) = entry["outputs"][node]["tensors"]
    return load_file(str(Path(server.output_dir) / name))["images"]


def _tile_count(path: Path, shape: tuple) -> int:
    """How many tiles ComfyUI's tiled decode makes of this latent (the first pass; nothing decoded)."""
    import comfy.sd
    import comfy.utils

    from cfg_runtime.adapters.sampling.group_vae import TileSettings, enumerate_tiles

    channels, frames, height, width = shape
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    latent = torch.zeros((1, channels) + ((frames,) if frames else ()) + (height, width))
    with torch.inference_mode():  # as ComfyUI runs nodes
        return len(enumerate_tiles(vae, {"samples": latent}, TileSettings(**TILES)))


def test_group_decode_equals_vae_decode_tiled(comfy_server, tiny_model_dir):
    kinds = {}
    for kind, build in BUILDERS.items():
        if kind == "flux_style" and comfyui_version().startswith("0.3."):
            continue  # 0.3.75 builds the SD/Flux decoder at its full width only (too slow for a CPU test)
        path = build(tiny_model_dir / f"tiny_vae_{kind}.safetensors")
        comfy_server.add_model("vae", path.name, path)
        count = _tile_count(path, VAES[kind])
        assert count == 5 and all(count % n for n in SIZES[1:]), (kind, count)
        kinds[kind] = path.name
    for size in SIZES:
        entry = comfy_server.run(_graph(kinds, size, seed=3), timeout=600)
        for kind in kinds:
            ref = _saved(comfy_server, entry, f"{kind}_save_ref")
            assert ref.dtype == torch.float32 and ref.std() > 0.01, kind
            got = _saved(comfy_server, entry, f"{kind}_save_group")
            assert got.shape == ref.shape and torch.equal(got, ref), f"{kind} at {size} ranks differs"
