"""Host memory of the model transport: the parent and every rank at 1, 2 and 4 CPU ranks.

ComfyUI as a library (CPU), a random-weight LTX-Video transformer built with ComfyUI's own
class (default: 8 blocks at width 1024, 136M parameters, 0.54 GB float32), loaded with
core's loader from a safetensors file. After one sampling job on a group of N ranks (the
guider's own group path), /proc/<pid>/smaps_rollup of the parent and of each rank is read
while the group is alive. Two transports:

  own     the model ComfyUI holds becomes the shared copy (ComfyUI 0.3.75; 0.29 without
          dynamic VRAM)
  recipe  the held model cannot be pickled (it carries a ctypes array, as a dynamic-VRAM
          model carries comfy-aimdo state): the ranks get a copy built with the loader's
          recipe (0.29 only)

    COMFYUI_DIR=... python bench/bench_transport_memory.py [--ranks 1,2,4] [--blocks 8] [--out FILE]

Pss counts a shared page once over all processes that map it: the sum of Pss over the
parent and the ranks is what the machine holds. Shmem pages (the shared weights) are in
"Pss_Shmem" / "Shared_*"; a rank's private model copy would show in "Private_*".
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(1, str(REPO))

KEYS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Shared_Dirty", "Private_Clean",
        "Private_Dirty")


def smaps(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return {k: out.get(k) for k in KEYS}


def build_model(path: Path, blocks: int, width_heads: int) -> int:
    """An LTXV transformer with 64-dim heads x width_heads, `blocks` blocks; returns its byte size."""
    import torch
    from safetensors.torch import save_file
    from devkit.tiny_models import init_weights

    import comfy.ops
    from comfy.ldm.lightricks.model import LTXVModel

    config = {"in_channels": 128, "num_layers": blocks, "num_attention_heads": width_heads, "attention_head_dim": 64,
              "cross_attention_dim": 64 * width_heads, "caption_channels": 32}
    model = LTXVModel(**config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights(model, 0, 0.02)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"config": json.dumps({"transformer": config})})
    return sum(t.numel() * t.element_size() for t in sd.values())


def run_group(patcher, ranks: int) -> dict:
    import torch
    import comfy.samplers
    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.group import current_group, shutdown_group
    from cfg_runtime.guidance.presets import standard_cfg
    from devkit.tiny_models import tiny_conditioning, tiny_latent

    shutdown_group()
    g = MultiBranchGuider(patcher, standard_cfg(3.0), ParallelSettings(world_size=ranks, devices=",".join(["cpu"] * ranks),
                                                                       step_timeout_s=600, start_timeout_s=600))
    g.set_conds(tiny_conditioning(1), tiny_conditioning(2))
    latent = tiny_latent(0)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    t0 = time.monotonic()
    with torch.inference_mode():
        g.sample(noise, latent, comfy.samplers.ksampler("euler"), torch.tensor([1.0, 0.5, 0.0]), None, None,
                 True, 7)
    seconds = time.monotonic() - t0
    group = current_group()
    time.sleep(1.0)
    rec = {"ranks": ranks, "first_job_s": round(seconds, 2), "parent": smaps(os.getpid()),
           "rank_procs": [smaps(pid) for pid in group.pids()]}
    everyone = [rec["parent"], *rec["rank_procs"]]
    rec["sum_pss"] = sum(m["Pss"] for m in everyone)
    rec["sum_rss"] = sum(m["Rss"] for m in everyone)
    rec["sum_private"] = sum(m["Private_Clean"] + m["Private_Dirty"] for m in everyone)
    shutdown_group()
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--modes", default="own,recipe")
    ap.add_argument("--out", default="")
    ap.add_argument("--build-only", default="", help=argparse.SUPPRESS)  # child: write the model file
    args = ap.parse_args()

    from support.paths import COMFYUI_DIR, import_comfy

    import_comfy()
    import torch
    import comfy.sd

    torch.set_num_threads(1)
    if args.build_only:
        print(build_model(Path(args.build_only), args.blocks, args.heads))
        return
    tmp = Path(tempfile.mkdtemp(prefix="cfgp_mem_"))
    path = tmp / "ltxv_mem.safetensors"
    # built in a child process, so the parent's memory holds only what ComfyUI loaded
    weights = int(subprocess.run([sys.executable, __file__, "--build-only", str(path), "--blocks", str(args.blocks),
                                  "--heads", str(args.heads)], check=True, capture_output=True,
                                 text=True).stdout.split()[-1])
    base = smaps(os.getpid())  # after importing ComfyUI, before loading the model
    result = {"parent_before_load": base, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.node(),
              "cpus": os.cpu_count(), "comfyui": str(COMFYUI_DIR), "torch": torch.__version__,
              "weights_bytes": weights, "runs": {}}
    print(f"model: {weights / 2**20:.1f} MiB of float32 weights", flush=True)
    for mode in args.modes.split(","):
        patcher = comfy.sd.load_diffusion_model(str(path))
        if mode == "recipe":
            if getattr(patcher, "cached_patcher_init", None) is None:
                print("recipe: this ComfyUI has no cached_patcher_init; skipped", flush=True)
                continue
            patcher.model.cfgp_unpicklable = (ctypes.c_uint * 2)()  # as aimdo's state on a dynamic model
        for n in (int(x) for x in args.ranks.split(",")):
            rec = run_group(patcher, n)
            result["runs"][f"{mode}/{n}"] = rec
            mib = lambda b: f"{b / 2**20:7.1f}"  # noqa: E731
            p = rec["parent"]
            line = (f"{mode:6s} {n} rank(s): parent Pss {mib(p['Pss'])} (shmem {mib(p['Pss_Shmem'] or 0)}) "
                    f"private {mib(p['Private_Clean'] + p['Private_Dirty'])}; ranks Pss "
                    + ", ".join(mib(r["Pss"]) for r in rec["rank_procs"])
                    + "; ranks private " + ", ".join(mib(r["Private_Clean"] + r["Private_Dirty"])
                                                     for r in rec["rank_procs"])
                    + "; ranks shared " + ", ".join(mib(r["Shared_Clean"] + r["Shared_Dirty"])
                                                    for r in rec["rank_procs"])
                    + f"; sum Pss {mib(rec['sum_pss'])} MiB")
            print(line, flush=True)
        del patcher
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
