"""Batch split through the worker group: whole sampling runs, split batch against the whole batch.

The record's per-sample forward times (``bench_batch_split.py``) come from one process. This
bench runs what a user runs: a Flux model (ComfyUI's own class, random bf16 weights, full
width, a few blocks) saved as a file and loaded by ``comfy.sd.load_diffusion_model`` as
UNETLoader does, a batch of latents sampled with CFG by the Multi-Branch Guider's runtime:

  size 1          the whole batch in this process (the reference)
  branch split    N ranks, batch_split off (exact: compared bit for bit)
  batch split     N ranks, batch_split G (G groups of N/G ranks; compared sample by sample)

Per run: wall seconds of the sampling call (first and warm; warm = another seed), and for the
split runs bitwise equality, max abs and relative L2 per sample against size 1.

    PYTHONPATH=/tmp/site python3 bench/bench_batch_split_group.py --comfy $COMFYUI_DIR --devices cuda:0,cuda:0 \
        --batch 4 --steps 8 --out $OUT
    python bench/bench_batch_split_group.py --comfy .cache/comfyui-0.29 --tiny --devices cpu,cpu --batch 3
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FULL = {"image": 128, "tokens": 256}  # bench_batch_split.FLUX as it is: 1024x1024, 256 text tokens
TINY = {"image": 8, "tokens": 8, "hidden_size": 128, "num_heads": 1, "vec_in_dim": 32, "context_in_dim": 64,
        "depth": 1, "depth_single_blocks": 1}


def flux_config(size: dict) -> dict:
    """comfy.ldm.flux.model.Flux arguments: bench_batch_split's full-width Flux, with the size's overrides
    (ComfyUI 0.29 derives heads = hidden / 128 from the weights)."""
    from bench_batch_split import FLUX

    return {**FLUX, **{k: v for k, v in size.items() if k in FLUX}}


def build_model_file(size: dict, dtype: torch.dtype, path: Path) -> Path:
    """A Flux diffusion-model file with random N(0, 0.02) weights, written as a checkpoint is."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from safetensors.torch import save_file

    module = Flux(**flux_config(size), dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    save_file({k: v.to(dtype).contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def conditioning(size: dict, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    config = flux_config(size)
    text = torch.randn(1, size["tokens"], config["context_in_dim"], generator=g)
    pooled = torch.randn(1, config["vec_in_dim"], generator=g)
    return [[text, {"pooled_output": pooled, "guidance": 3.5}]]


def sample(model, size: dict, *, ranks: int, devices: str, batch: int, batch_split: int, steps: int, seed: int):
    """One sampling run; (samples, seconds)."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.guidance.presets import standard_cfg

    settings = ParallelSettings(world_size=ranks, devices=devices, batch_split=batch_split, step_timeout_s=600,
                                start_timeout_s=600)
    guider = MultiBranchGuider(model, standard_cfg(3.5), settings)
    guider.set_conds(conditioning(size, 1), conditioning(size, 2))
    latent = torch.zeros(batch, 16, size["image"], size["image"])
    noise = Noise_RandomNoise(seed).generate_noise({"samples": latent})
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).cpu()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True,
                            seed=seed)
    return out.float().cpu(), time.perf_counter() - t0


def per_sample(split: torch.Tensor, whole: torch.Tensor) -> list[dict]:
    return [{"bitwise": bool(torch.equal(s, w)), "max_abs": float((s - w).abs().max()),
             "rel_l2": float((s - w).norm() / w.norm().clamp_min(1e-30)), "max_out": float(w.abs().max())}
            for s, w in zip(split, whole)]


def run(args) -> dict:
    import comfy.sd

    from cfg_runtime.group import shutdown_group

    size = TINY if args.tiny else FULL
    dtype = torch.float32 if args.tiny else torch.bfloat16
    ranks = len(args.devices.split(","))
    report = {"family": "flux", "config": flux_config(size), "dtype": str(dtype), "batch": args.batch,
              "steps": args.steps, "devices": args.devices, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        model = comfy.sd.load_diffusion_model(str(build_model_file(size, dtype, Path(folder) / "flux.safetensors")))
    variants = [("size 1", 1, "cpu" if args.tiny else args.devices.split(",")[0], 1),
                ("branch split", ranks, args.devices, 1), ("batch split", ranks, args.devices, args.groups)]
    reference: dict[int, torch.Tensor] = {}
    try:
        for name, n, devices, groups in variants:
            for call, seed in (("first", 1), ("warm", 2)):
                out, seconds = sample(model, size, ranks=n, devices=devices, batch=args.batch, batch_split=groups,
                                      steps=args.steps, seed=seed)
                row = {"variant": name, "ranks": n, "batch_groups": groups, "call": call, "seconds": round(seconds, 3)}
                if n == 1:
                    reference[seed] = out
                else:
                    row["per_sample_vs_size1"] = per_sample(out, reference[seed])
                report["runs"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutdown_group()
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfy", required=True, help="a ComfyUI folder (0.29 or newer: Flux heads from the weights)")
    ap.add_argument("--devices", default="cuda:0,cuda:0", help="one entry per rank, as the nodes' devices widget")
    ap.add_argument("--groups", type=int, default=2, help="batch groups of the batch-split variant")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="a 128-wide fp32 model (CPU development)")
    ap.add_argument("--out", default=None, help="folder for batch_split_group.json")
    args = ap.parse_args(argv)
    for p in (str(REPO), str(Path(args.comfy).resolve())):
        sys.path.insert(0, p)
    if not torch.cuda.is_available():
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
    report = run(args)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "batch_split_group.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
