"""Where a first prompt's time goes on the GPU, size 1 against size 2, through ComfyUI's main.py.

A full-width LTX-2 audio+video model (`--blocks` of 48: 19.6 B parameters, 39 GB bf16) with
the LTX2 Sampler (4 passes), 768x512x121, `--steps` steps, dynamic VRAM on (main.py's default
on NVIDIA), two gloo ranks sharing the one GPU for size 2 (devices cuda:0,cuda:0). Each
variant gets a fresh server and two prompts (the second with another seed, so ComfyUI runs it
again). Read from the server's own log: "Prompt executed in", the group's "ready in", each
rank's "model ready in", and the pack's lines.

    COMFYUI_DIR=... python bench/bench_first_prompt_gpu.py --blocks 48 --steps 8 \\
        --variant size1=.:1 --variant now=.:2 --variant before=/path/to/old/pack:2 \
        --variant at_launch=.:2:launch --out result.json

A variant ending in ":launch" starts its server with CFG_PARALLEL_START_AT_LAUNCH naming its
ranks (the ranks start with ComfyUI); its first prompt is queued as soon as the server answers.
One ending in ":nopin" starts it with --disable-pinned-memory (ComfyUI pins nothing, and the ranks
copy the shared weights to the GPU pageable, as before 2026-12-05). One ending in ":cold" starts
it with CFG_PARALLEL_WARM_START=0 (the ranks spawned afresh, not forked by the warm fork server).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _build(path: Path, blocks: int) -> None:
    sys.path.insert(0, os.environ["COMFYUI_DIR"])
    from support.gpu_ltx2 import build_full_width_ltxav

    print(json.dumps({"params": build_full_width_ltxav(path, blocks)}))


def _graph(size: int, seed: int, steps: int) -> dict:
    from support.gpu_ltx2 import CAPTION_CHANNELS
    from support.tiny_ltx2 import ltx2_sampler_graph

    g = ltx2_sampler_graph("ltx2_full_width.safetensors", size=size, audio_vae="tiny_ltx_audio_vae.safetensors",
                           channels=2 * CAPTION_CHANNELS, steps=steps, width=768, height=512, length=121,
                           prefix=f"latents/first_{size}", seed=seed, nonce=seed)
    g["9"]["inputs"]["devices"] = ",".join(["cuda:0"] * size)
    return g


def _phases(log: str) -> dict:
    grab = lambda pattern: [float(next(g for g in ([x] if isinstance(x, str) else x) if g))  # noqa: E731
                            for x in re.findall(pattern, log)]
    return {"prompt_s": grab(r"Prompt executed in ([\d.]+) seconds"),
            "group_ready_s": grab(r"group ready: .* in ([\d.]+) s"),
            "rank_model_ready_s": grab(r"model ready in ([\d.]+) s"),
            "recipe_copy_s": grab(r"from its loader recipe in ([\d.]+) s"),
            "copy_load_s": grab(r"loaded into shared memory in ([\d.]+) s of it"),
            "shared_memory_s": grab(r"moved into shared memory in ([\d.]+) s|moved there after the load, in ([\d.]+) s"),
            "rank_start_s": re.findall(r"rank \d+ ready on \S+ in [\d.]+ s \(([^)]*)\)", log),
            "first_unpack_s": grab(r"first job unpacked in ([\d.]+) s"),
            "rank_page_lock_s": grab(r"page-locked for the GPU in ([\d.]+) s"),
            "sampled_s": grab(r"sampled on \d+ ranks in ([\d.]+) s"),
            "pack_lines": [line for line in log.splitlines() if "cfg-parallel" in line][:40]}


def _latent_digests(server, entry) -> dict:
    """sha256 of each SaveLatent's tensor bytes, by node id: equal digests, equal latents bit for bit."""
    import hashlib

    import torch

    out = {}
    for node_id in sorted((entry.get("outputs") or {})):
        if (entry["outputs"][node_id] or {}).get("latents"):
            t = server.saved_latent(entry, node_id=node_id).contiguous()
            out[node_id] = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    return out


def _variant(label: str, pack: Path, size: int, models: dict, steps: int, flags: list[str],
             settle_s: float = 0.0) -> dict:
    from devkit.comfy_server import PACK_LINK_NAME
    from support.gpu_ltx2 import GpuComfyServer

    env = {"CFG_PARALLEL_BACKEND": "gloo"}
    at_launch = "launch" in flags
    if at_launch:
        env["CFG_PARALLEL_START_AT_LAUNCH"] = ",".join(["cuda:0"] * size)
    if "cold" in flags:  # the ranks spawned afresh, not forked by the warm fork server
        env["CFG_PARALLEL_WARM_START"] = "0"
    extra = ["--disable-pinned-memory"] if "nopin" in flags else []
    server = GpuComfyServer(models=models, link_pack=False, env=env, extra_args=extra, startup_timeout=300)
    (server.custom_nodes_dir / PACK_LINK_NAME).symlink_to(pack.resolve(), target_is_directory=True)
    walls, digests = [], []
    try:
        t0 = time.monotonic()
        server.start()
        start_s = round(time.monotonic() - t0, 1)
        time.sleep(settle_s)  # a user opening the page before queueing (the same for every variant)
        for seed in (11, 12):
            t0 = time.monotonic()
            entry = server.run(_graph(size, seed, steps), timeout=900)
            walls.append(round(time.monotonic() - t0, 2))
            digests.append(_latent_digests(server, entry))
        log = server.log_text()
    finally:
        server.stop()
    result = {"label": label, "pack": str(pack), "size": size, "at_launch": at_launch, "server_args": extra,
              "server_start_s": start_s, "settle_s": settle_s,
              "wall_s": walls, "latent_sha256": digests,
              **_phases(log), "log_lines": len(log.splitlines())}
    print(json.dumps({k: v for k, v in result.items() if k != "pack_lines"}), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=48)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL=PACK_DIR:SIZE[:launch][:nopin], in the order to run")
    ap.add_argument("--out", default="")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between the server's first answer and the first prompt, every variant")
    ap.add_argument("--build", default="", help=argparse.SUPPRESS)  # internal: build the model file and exit
    args = ap.parse_args()
    if args.build:
        return _build(Path(args.build), args.blocks)
    from support.tiny_ltx2 import build_tiny_ltx_audio_vae

    folder = Path(tempfile.mkdtemp(prefix="cfgp_first_prompt_gpu_"))
    model = folder / "ltx2_full_width.safetensors"
    t0 = time.monotonic()
    built = subprocess.run([sys.executable, __file__, "--build", str(model), "--blocks", str(args.blocks)],
                           check=True, capture_output=True, text=True)
    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "blocks": args.blocks,
              "steps": args.steps, "shape": [768, 512, 121], "build_s": round(time.monotonic() - t0, 1),
              **json.loads(built.stdout.strip().splitlines()[-1]), "variants": []}
    models = {"diffusion_models/ltx2_full_width.safetensors": model,
              "checkpoints/tiny_ltx_audio_vae.safetensors": build_tiny_ltx_audio_vae(folder / "audio_vae.safetensors")}
    try:
        for spec in args.variant:
            label, rest = spec.split("=", 1)
            pack, size, *flags = rest.split(":")
            result["variants"].append(_variant(label, Path(pack), int(size), models, args.steps, flags,
                                                       args.settle))
            first = result["variants"][0]["latent_sha256"]
            result["variants"][-1]["equals_first_variant"] = result["variants"][-1]["latent_sha256"] == first
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        model.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
