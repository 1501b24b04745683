"""The LTX2 Sampler's decode option through a real ComfyUI server.

With decode on, the images output equals the graph LTX2 Sampler -> (LTXVSeparateAVLatent) ->
VAE Decode (Tiled) with the same tile settings, bit for bit: at parallel size 2 the tiles are
decoded on the worker group (3 tiles, so the ranks get unequal shares), at size 1 by core's node
in ComfyUI. LTX-2 audio+video and LTX-Video (ComfyUI 0.29 and later: 0.3.75's VAELoader reads no
config, so it cannot load the tiny VAE; the refusal and the blocked output run everywhere). The VAE is
a tiny LTX video VAE built with ComfyUI's own class, with LTX's real decode ratios (tiled decodes
need them) and no timestep conditioning (that decode adds unseeded noise). Decode on without a
vae is refused before sampling; with decode off a node on the images output does not run, and
ComfyUI reports why ("Execution Blocked").
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from support.paths import COMFYUI_DIR, NEEDS_029
from support.tiny_ltx2 import ltx2_sampler_graph, ltxav_available

pytestmark = pytest.mark.server
needs_ltx2 = pytest.mark.skipif(
    not ltxav_available(),
    reason=f"{NEEDS_029} the LTX2 Sampler's audio+video decode needs a ComfyUI with LTX-2 (e.g. 0.29); "
           f"COMFYUI_DIR={COMFYUI_DIR} has none")
# 0.3.75's VAELoader passes no file metadata, so it builds an LTX VAE at its full default size, not the tiny one
needs_vae_config = pytest.mark.skipif(
    not ltxav_available(),
    reason=f"{NEEDS_029} a tiny LTX VAE needs a VAELoader that reads its config (ComfyUI 0.29); "
           f"COMFYUI_DIR={COMFYUI_DIR} has an older one")

MODEL, AUDIO_VAE, VAE = "tiny_ltxav.safetensors", "tiny_ltx_audio_vae.safetensors", "tiny_ltx_tiled_vae.safetensors"
LTXV = "tiny_ltxv.safetensors"  # LTX-Video: 2 blocks, 32-wide captions, no audio
LTXV_POLICY = dict(channels=32, video_modality=1.0, audio_modality=1.0)
TILES = {"tile_size": 64, "overlap": 16, "temporal_size": 8, "temporal_overlap": 4}
LENGTH = 25  # 4 latent frames of 2x2: VAE Decode (Tiled) makes 3 tiles of it with TILES


@pytest.fixture(scope="module")
def server(comfy_server, tiny_model_dir):
    from support.tiny_ltx2 import build_tiny_ltx_tiled_vae

    comfy_server.add_model("vae", VAE, build_tiny_ltx_tiled_vae(tiny_model_dir / VAE))
    return comfy_server


def _graph(size: int, nonce: int, decode: str = "on", vae: str | None = VAE, reference: bool = True,
           av: bool = True) -> dict:
    """LTX2 Sampler (decode option) -> its images saved exactly; with `reference`, also its latent ->
    (LTXVSeparateAVLatent) -> VAE Decode (Tiled) with the same settings, saved exactly. `av`: the tiny
    LTX-2 model on an audio+video latent, else the tiny LTX-Video model on a video latent."""
    kw = dict(audio_vae=AUDIO_VAE) if av else LTXV_POLICY
    g = ltx2_sampler_graph(MODEL if av else LTXV, size=size, vae=vae, length=LENGTH, nonce=nonce,
                           prefix=f"latents/decode{nonce}", **kw)
    g["9"]["class_type"] = "CFGParallelMultiGPU_LTX2Sampler"
    g["9"]["inputs"].update(decode=decode, **TILES)
    g["41"] = {"class_type": "CFGPTestSaveTensor", "inputs": {"images": ["9", 2], "filename_prefix": f"group{nonce}"}}
    if reference:
        video = ["14", 0] if av else ["9", 0]
        g["40"] = {"class_type": "VAEDecodeTiled", "inputs": {"samples": video, "vae": ["17", 0], **TILES}}
        g["42"] = {"class_type": "CFGPTestSaveTensor", "inputs": {"images": ["40", 0], "filename_prefix": f"ref{nonce}"}}
    return g


def _saved(server, entry: dict, node: str) -> torch.Tensor:
    from safetensors.torch import load_file

    (name,) = entry["outputs"][node]["tensors"]
    return load_file(str(Path(server.output_dir) / name))["images"]


def _tile_count(path: Path) -> int:
    import comfy.sd
    import comfy.utils

    from cfg_runtime.adapters.sampling.group_vae import TileSettings, enumerate_tiles

    sd, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
    vae = comfy.sd.VAE(sd=sd, metadata=metadata)
    with torch.inference_mode():
        return len(enumerate_tiles(vae, {"samples": torch.zeros(1, 128, 4, 2, 2)}, TileSettings(**TILES)))


def _check_decode(server, tiny_model_dir, av: bool, nonces: tuple[int, int]) -> None:
    assert _tile_count(tiny_model_dir / VAE) == 3
    for size, nonce in zip((2, 1), nonces):
        decodes = server.log_text().count("VAE decode of 3 tiles on 2 ranks")
        entry = server.run(_graph(size, nonce, av=av), timeout=600)
        assert server.log_text().count("VAE decode of 3 tiles on 2 ranks") == decodes + (size == 2)  # on the group
        ref, got = _saved(server, entry, "42"), _saved(server, entry, "41")
        assert tuple(ref.shape) == (LENGTH, 64, 64, 3) and ref.dtype == torch.float32 and ref.std() > 0.01
        assert got.shape == ref.shape and torch.equal(got, ref), f"size {size}: the decode differs"


@needs_ltx2
def test_decode_on_equals_separate_and_vae_decode_tiled(server, tiny_model_dir):
    _check_decode(server, tiny_model_dir, True, (301, 302))


@needs_vae_config
def test_ltx_video_decode_on_equals_vae_decode_tiled(server, tiny_model_dir):
    _check_decode(server, tiny_model_dir, False, (311, 312))


@needs_ltx2
def test_decode_of_a_batch_split_over_the_ranks(server):
    """A batch of 2 sampled with batch_split 2 on 2 ranks and decoded on the group: the images
    are the batch's frames in order, equal to VAE Decode (Tiled) of the same latent bit for bit."""
    g = _graph(2, 321)
    g["4"]["inputs"]["batch_size"] = 2
    g["5"]["inputs"]["batch_size"] = 2
    g["20"]["inputs"].update(video_rescale=0.0, audio_rescale=0.0)  # rescale mixes a batch: refused under a split
    g["9"]["inputs"]["batch_split"] = "2"
    entry = server.run(g, timeout=600)
    ref, got = _saved(server, entry, "42"), _saved(server, entry, "41")
    assert tuple(ref.shape) == (2 * LENGTH, 64, 64, 3) and not torch.equal(ref[:LENGTH], ref[LENGTH:])
    assert torch.equal(got, ref), "the decode of the split batch differs"


def test_decode_on_without_vae_is_refused_before_sampling(server):
    t0 = time.monotonic()
    msg = server.run_failing(_graph(2, 303, vae=None, reference=False, av=False))
    assert msg.startswith("CFGParallelMultiGPU_LTX2Sampler: decode is on, but the vae input is empty: connect the "
                          "video VAE"), msg
    assert time.monotonic() - t0 < 60


def test_decode_off_blocks_a_node_on_images(server):
    """The latents are still saved; the node on images does not run, and ComfyUI says why."""
    client_id = "decode-off"
    ws = server.ws_connect(client_id)
    errors = []
    try:
        prompt_id = server.queue(_graph(2, 304, decode="off", vae=None, reference=False, av=False), client_id=client_id)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            raw = ws.recv()
            if not isinstance(raw, str):
                continue
            msg = json.loads(raw)
            data = msg.get("data", {})
            if msg["type"] == "execution_error" and data.get("prompt_id") == prompt_id:
                errors.append(data)
            if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
    finally:
        ws.close()
    entry = server.wait(prompt_id, timeout=60)
    assert "41" not in entry["outputs"] and "10" in entry["outputs"] and "12" in entry["outputs"]
    assert [(e["node_id"], e["exception_type"]) for e in errors] == [("41", "ExecutionBlocked")], errors
    assert errors[0]["exception_message"].startswith(
        "Execution Blocked: The LTX2 Sampler's images output is empty because its decode input is off"), errors
