"""Where a first size-2 prompt's time goes, through a real ComfyUI server on the CPU.

The tiny LTX-Video graph (UNETLoader -> CFG Parallel (size 2) -> CFGGuider ->
SamplerCustomAdvanced -> SaveLatent), queued twice (the second with another seed). Reads the
server log: "Prompt executed in", the group's "ready in", each rank's "model ready in".

    python bench/bench_first_prompt_cpu.py --pack DIR --out result.json   # DIR: a checkout of the pack
    python bench/bench_first_prompt_cpu.py --warm 1 --out result.json     # the ranks forked by the warm
                                                                          # fork server (0: spawned afresh)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _graph(seed: int) -> dict:
    from devkit.tiny_models import tiny_ltxv_graph

    g = tiny_ltxv_graph(seed=seed, steps=4, width=96, height=96, length=17)
    g["20"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {"model": ["1", 0], "parallel_size": 2,
                                                                    "devices": "cpu"}}
    g["7"]["inputs"]["model"] = ["20", 0]
    return g


def _phases(log: str) -> dict:
    grab = lambda pattern: [float(x) for x in re.findall(pattern, log)]  # noqa: E731
    return {"prompt_s": grab(r"Prompt executed in ([\d.]+) seconds"),
            "group_ready_s": grab(r"group ready: .* in ([\d.]+) s"),
            "rank_model_ready_s": grab(r"\[rank \d\] model ready in ([\d.]+) s"),
            "rank_start": re.findall(r"rank \d+ ready on \S+ in ([\d.]+ s \([^)]*\))", log),
            "first_unpack_s": grab(r"first job unpacked in ([\d.]+) s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=str(REPO))
    ap.add_argument("--out", default="")
    ap.add_argument("--warm", choices=("", "0", "1"), default="", help="CFG_PARALLEL_WARM_START for the server")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds between the server's first answer and the first prompt (a user opening the page)")
    args = ap.parse_args()
    from devkit.comfy_server import PACK_LINK_NAME, ComfyServer
    from devkit.tiny_models import build_tiny_ltxv

    folder = Path(tempfile.mkdtemp(prefix="cfgp_first_prompt_"))
    model = build_tiny_ltxv(folder / "tiny_ltxv.safetensors")
    server = ComfyServer(link_pack=False, env={"CFG_PARALLEL_WARM_START": args.warm} if args.warm else None)
    (server.custom_nodes_dir / PACK_LINK_NAME).symlink_to(Path(args.pack).resolve(), target_is_directory=True)
    server.add_model("diffusion_models", model.name, model)
    walls = []
    try:
        server.start()
        time.sleep(args.settle)
        for seed in (1, 2):
            t0 = time.monotonic()
            server.run(_graph(seed), timeout=600)
            walls.append(round(time.monotonic() - t0, 2))
        result = {"pack": str(args.pack), "warm": args.warm, "settle_s": args.settle, "wall_s": walls, **_phases(server.log_text()),
                  "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    finally:
        server.stop()
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
