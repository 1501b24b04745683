"""The main job: the tiny demo workflow through a real ComfyUI, serial vs parallel.

Starts a ComfyUI server on 127.0.0.1 with this pack, a tiny LTX-Video model built with
ComfyUI's own classes and random text embeddings (no text encoder is tiny enough),
runs workflows/api/tiny_demo.json with the Multi-Branch Guider at parallel size 1
(in ComfyUI) and at size 2 (two worker ranks: GPUs when there are two, else CPU
ranks with gloo), and checks that both latents are equal bit for bit.
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # devkit: a real ComfyUI server, tiny models

from devkit.comfy_server import ComfyServer  # noqa: E402
from devkit.tiny_models import build_tiny_ltxv  # noqa: E402

WORKFLOW = REPO / "workflows" / "api" / "tiny_demo.json"


def with_size(graph: dict, size: int, nonce: int) -> dict:
    import torch

    g = copy.deepcopy(graph)
    for node in g.values():
        if node["class_type"] == "MultiBranchGuider":
            node["inputs"]["parallel_size"] = size
            # two GPUs when there are two; otherwise CPU ranks (gloo), also on a one-GPU machine
            node["inputs"]["devices"] = "" if torch.cuda.device_count() >= size else "cpu"
        if node["class_type"] == "CFGPTestConditioning":
            node["inputs"]["nonce"] = nonce
    return g


def main() -> int:
    graph = json.loads(WORKFLOW.read_text())
    with tempfile.TemporaryDirectory(prefix="cfgp-demo-") as tmp:
        model = build_tiny_ltxv(Path(tmp) / "tiny_ltxv.safetensors", seed=0)
        print("[demo] starting ComfyUI (CPU) with comfyui-cfg-parallel ...", flush=True)
        with ComfyServer() as server:
            server.add_model("diffusion_models", "tiny_ltxv.safetensors", model)
            results = {}
            for size, nonce in ((1, 1), (2, 2), (2, 3)):
                t0 = time.monotonic()
                entry = server.run(with_size(graph, size, nonce), timeout=300)
                seconds = time.monotonic() - t0
                results.setdefault(size, []).append((server.saved_latent(entry), seconds))
                label = "serial, in ComfyUI" if size == 1 else "parallel, worker group"
                print(f"[demo] parallel_size={size} ({label}): {seconds:.2f} s", flush=True)
            status = server.run({"1": {"class_type": "CFGParallelGroupStatus", "inputs": {"shutdown": False}}})
            report = json.loads(status["outputs"]["1"]["text"][0])

    serial = results[1][0][0]
    first, second = results[2]
    print(f"[demo] latent shape {tuple(serial.shape)}, mean |x| {serial.abs().mean():.6f}")
    print(f"[demo] worker group: {report['backend']} on {', '.join(report['devices'])}; per rank: "
          + "; ".join(f"rank {i} ran {r['forwards']}" for i, r in enumerate(report["last_job"]["per_rank"])))
    print(f"[demo] second parallel prompt reused the loaded model: "
          f"{not any(r['model_reloaded'] for r in report['last_job']['per_rank'])} "
          f"({second[1]:.2f} s vs {first[1]:.2f} s for the first)")
    same = bool((first[0] == serial).all()) and first[0].dtype == serial.dtype and bool((second[0] == serial).all())
    print(f"[demo] parallel == serial, bit for bit: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
