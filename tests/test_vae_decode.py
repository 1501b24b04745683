"""VAE Decode (Multi-GPU) in process: what it refuses, and the plain-copy route (a VAE under
ComfyUI's dynamic VRAM travels as a copy of its module) still equals VAEDecodeTiled bit for bit."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from support.paths import import_comfy_or_skip

TILES = dict(tile_size=64, overlap=16, temporal_size=8, temporal_overlap=4)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    import_comfy_or_skip()
    import comfy.sd
    import comfy.utils

    from devkit.tiny_vaes import build_tiny_taesd

    path = build_tiny_taesd(tmp_path_factory.mktemp("vae") / "taesd.safetensors")
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))


def test_refuses_what_it_cannot_decode_with_what_to_do(tiny_vae):
    from cfg_runtime.adapters.sampling.group_vae import VaeDecodeError, check_vae

    with pytest.raises(VaeDecodeError, match="VAELoader"):
        check_vae(None, {"samples": torch.zeros(1, 16, 6, 6)})
    with pytest.raises(VaeDecodeError, match="VAEDecodeAudio"):
        check_vae(tiny_vae, {"samples": torch.zeros(1, 16, 6)})
    with pytest.raises(VaeDecodeError, match="LATENT"):
        check_vae(tiny_vae, {"latent": torch.zeros(1, 16, 6, 6)})
    nested = torch.nested.nested_tensor([torch.zeros(16, 6, 6), torch.zeros(16, 4, 4)])
    with pytest.raises(VaeDecodeError, match="LTXVSeparateAVLatent"):
        check_vae(tiny_vae, {"samples": nested})


def test_plain_copy_route_equals_vae_decode_tiled(tiny_vae):
    """Two CPU ranks get a plain copy of the module (the dynamic-VRAM route) and decode 5 tiles."""
    import nodes as core

    from cfg_runtime.adapters.sampling import group_vae as gv
    from cfg_runtime.adapters.sampling.guider import ParallelSettings
    from cfg_runtime.adapters.sampling.vae_job import TileOutputs
    from cfg_runtime.group import get_group, shutdown_group

    samples = {"samples": torch.randn(1, 16, 6, 6, generator=torch.Generator().manual_seed(5))}
    tiles = gv.TileSettings(**TILES)
    with torch.inference_mode():
        ref = core.VAEDecodeTiled().decode(tiny_vae, samples, *TILES.values())[0]
        inputs = gv.enumerate_tiles(tiny_vae, samples, tiles)
        assert len(inputs) == 5
        group = get_group(ParallelSettings(world_size=2, devices="cpu").group_spec())
        try:
            token = gv.base_token(tiny_vae.patcher)
            job = gv._job(tiny_vae, inputs, token)
            result = gv._run(group, job, tiny_vae, True, lambda phase: None, None)
            got = gv.blend(tiny_vae, samples, tiles, inputs, gv.decoded_outputs(job, result.value))
            # outputs that do not fit their slot (here: a block of another dtype) come back the old way
            odd = replace(job, into=TileOutputs.allocate([s for _, s in job.into.slots], torch.float64))
            apart = gv._run(group, odd, tiny_vae, True, lambda phase: None, None)
            got_apart = gv.blend(tiny_vae, samples, tiles, inputs, gv.decoded_outputs(odd, apart.value))
        finally:
            shutdown_group()
    assert gv._COPIES[token] is not tiny_vae.first_stage_model  # the ranks got the copy
    assert [s["tiles"] for s in result.summaries] == [3, 2]
    assert [s["tiles_returned_apart"] for s in result.summaries] == [0, 0]  # all written into the shared block
    assert result.value.in_block == (0, 1, 2, 3, 4) and not result.value.loose
    assert [s["tiles_returned_apart"] for s in apart.summaries] == [3, 2] and not apart.value.in_block
    assert torch.equal(got_apart, ref)
    assert torch.equal(got, ref)
