"""VAE decode at real size: core VAEDecode and VAEDecodeTiled in this process against the group decode.

Builds a video VAE with ComfyUI's own class and random weights (saved and loaded the way
VAELoader loads a file: ``comfy.sd.VAE(sd=...)``, ComfyUI's detection and dtype choice):

  wan21  Wan 2.1 VAE (``comfy.ldm.wan.vae.WanVAE``, width 96), 832x480, 81 frames
         -> latent [1, 16, 21, 60, 104]
  ltxv   ComfyUI's LTX-Video VAE (``VideoVAE(version=2)``, its default config, with timestep
         conditioning: its decode adds unseeded noise), 768x512, 121 frames -> [1, 128, 16, 16, 24]
  ltx2   LTX-2's video VAE as far as its published config says: the same layout (encoder 4/6/6/2/2,
         decoder 4 x 5 res layers at 1024/512/256/128 channels, patch 4, pixel norm) with
         ``timestep_conditioning: false`` (no decode noise), written with the config in the file's
         metadata as LTX-2's checkpoint carries it; 768x512x121 -> [1, 128, 16, 16, 24]
  ltx2_2stage  the same VAE at the two-stage output size, 1536x1024x121 -> [1, 128, 16, 32, 48]

Then: VAEDecode (core node), VAEDecodeTiled (core node, its default settings), and the group
decode (``group_vae.decode_on_group``, same settings) at each rank count: the first call
(group start and the VAE's transfer) and a warm one; bitwise equality with VAEDecodeTiled; peak
GPU memory of this process and of each rank; tiles per rank and per-tile decode time; the
ComfyUI process's own parts (cutting the tiles, the blend) and where the blend ran.

    python bench/bench_vae_decode_gpu.py --family wan21 --ranks 1,2 --backend gloo --out $OUT
    python bench/bench_vae_decode_gpu.py --family wan21 --tiny --device cpu   # CPU development
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {"wan21": (16, 21, 60, 104), "ltxv": (128, 16, 16, 24), "ltx2": (128, 16, 16, 24),
            "ltx2_2stage": (128, 16, 32, 48)}
TINY = {"wan21": (16, 6, 8, 12), "ltxv": (128, 3, 3, 3), "ltx2": (128, 3, 3, 3), "ltx2_2stage": (128, 3, 6, 6)}


def _setup_paths(comfy_dir: str) -> None:
    comfy_dir = str(Path(comfy_dir).resolve())
    for p in (str(REPO), comfy_dir):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    sys.path.insert(1, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join([comfy_dir, str(REPO)] + (
        [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))


def build_vae(family: str, tiny: bool, path: Path):
    """The VAE file with random weights, loaded as VAELoader does."""
    import comfy.sd
    import comfy.utils
    from safetensors.torch import save_file

    metadata = None
    if family == "wan21":
        from comfy.ldm.wan.vae import WanVAE
        module = WanVAE(dim=4 if tiny else 96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True], dropout=0.0)
    elif family == "ltxv":
        from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE
        module = VideoVAE(version=2)
    else:
        from comfy.ldm.lightricks.vae.causal_video_autoencoder import VideoVAE
        config = {**VideoVAE.get_default_config(None, 2), "timestep_conditioning": False}
        module = VideoVAE(version=2, config=config)
        metadata = {"config": json.dumps({"vae": config})}
    _init_weights(module)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path), metadata=metadata)
    del module
    sd, meta = comfy.utils.load_torch_file(str(path), return_metadata=True)
    return comfy.sd.VAE(sd=sd, metadata=meta)


def _init_weights(module) -> None:
    """Random weights scaled by fan-in, unit norms, zero biases; the latent statistics buffers
    (created empty) set to mean 0, std 1."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel() if p.ndim else 1) ** 0.5))
        for name, b in module.named_buffers():
            if name.endswith("std-of-means"):
                b.fill_(1.0)
            elif name.endswith("mean-of-means"):
                b.zero_()


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return out, time.perf_counter() - t0, peak


def run(args) -> dict:
    import comfy.model_management as mm
    import nodes as core

    from cfg_runtime.adapters.sampling.group_vae import TileSettings, decode_on_group, enumerate_tiles
    from cfg_runtime.adapters.sampling.guider import ParallelSettings

    device = mm.get_torch_device()
    import tempfile
    with tempfile.TemporaryDirectory() as folder:  # the file stays out of $OUT
        vae = build_vae(args.family, args.tiny, Path(folder) / f"bench_vae_{args.family}.safetensors")
    shape = (1,) + (TINY if args.tiny else FAMILIES)[args.family]
    latent = {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(1))}
    tiles = TileSettings(args.tile_size, args.overlap, args.temporal_size, args.temporal_overlap)
    res = {"family": args.family, "latent": list(shape), "vae_dtype": str(vae.vae_dtype), "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiles": vars(tiles),
           "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    import cfg_runtime.adapters.sampling.group_vae as group_vae
    parts: dict = {}
    for name in ("enumerate_tiles", "blend"):  # time the ComfyUI process's own parts of the group decode
        def timed_part(*a, _fn=getattr(group_vae, name), _name=name):
            out, parts[_name], _ = _timed(lambda: _fn(*a), device)
            return out
        setattr(group_vae, name, timed_part)
    with torch.inference_mode():
        t0 = time.perf_counter()
        res["tile_count"] = len(enumerate_tiles(vae, latent, tiles))
        res["enumerate_s"] = round(time.perf_counter() - t0, 3)
        res["blend_device"] = str(group_vae.blend_device(vae, latent, {0: torch.empty(1)}))
        if not args.skip_full:
            _, res["vae_decode_s"], res["vae_decode_peak"] = _timed(lambda: core.VAEDecode().decode(vae, latent)[0],
                                                                    device)
            mm.unload_all_models(); mm.soft_empty_cache()
        ref, res["tiled_s"], res["tiled_peak"] = _timed(lambda: core.VAEDecodeTiled().decode(
            vae, latent, tiles.tile_size, tiles.overlap, tiles.temporal_size, tiles.temporal_overlap)[0], device)
        res["image_shape"] = list(ref.shape)
        again, res["tiled_warm_s"], _ = _timed(lambda: core.VAEDecodeTiled().decode(  # the VAE already on the GPU
            vae, latent, tiles.tile_size, tiles.overlap, tiles.temporal_size, tiles.temporal_overlap)[0], device)
        res["tiled_repeatable"] = bool(torch.equal(again, ref))
        del again
        mm.unload_all_models(); mm.soft_empty_cache()
        for n in [int(x) for x in args.ranks.split(",")]:
            devs = ",".join([str(device)] * n) if device.type == "cuda" else "cpu"
            settings = ParallelSettings(world_size=n, devices=devs, backend=args.backend)
            runs = []
            for attempt in ("first", "warm"):
                (img, result), seconds, peak = _timed(lambda: decode_on_group(vae, latent, tiles, settings), device)
                runs.append({"call": attempt, "seconds": round(seconds, 3), "job_s": round(result.seconds, 3),
                             "enumerate_s": round(parts.get("enumerate_tiles", 0.0), 3),
                             "blend_s": round(parts.get("blend", 0.0), 3),
                             "equal_to_tiled": bool(torch.equal(img, ref)), "parent_peak": peak,
                             "per_rank": [{k: s.get(k) for k in ("tiles", "tiles_returned_apart", "decode_s", "vae_load_s", "peak_gpu_bytes")}
                                          for s in result.summaries]})
                print(json.dumps({"ranks": n, **runs[-1]}), flush=True)
            res[f"group_{n}"] = runs
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), default="wan21")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--backend", default="gloo", help="gloo puts several ranks on one GPU")
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--temporal-size", type=int, default=64)
    ap.add_argument("--temporal-overlap", type=int, default=8)
    ap.add_argument("--skip-full", action="store_true", help="leave out the untiled VAEDecode")
    ap.add_argument("--comfy", default=os.environ.get("COMFYUI_DIR", ""))
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp")
    args = ap.parse_args(argv)
    _setup_paths(args.comfy)
    import comfy.cli_args
    if args.device == "cpu" or not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = run(args)
    out = Path(args.out) / f"vae_decode_{args.family}.json"
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    from cfg_runtime.group import shutdown_group
    shutdown_group()


if __name__ == "__main__":
    main()
