"""On a real GPU through ComfyUI's own main.py (dynamic VRAM on, its default on NVIDIA):
an LTX-2 audio+video model at full width and a few blocks, size 2 == size 1 bit for bit,
with bf16 weights and with weight_dtype fp8_e4m3fn. Skipped without CUDA or LTX-2.

Two ranks share the one GPU (devices "cuda:0,cuda:0"): NCCL refuses a GPU listed twice, so
the server runs with CFG_PARALLEL_BACKEND=gloo (the documented way to do that).
CFGP_GPU_ARGS adds launch options to main.py (e.g. "--use-split-cross-attention --reserve-vram 2"):
the ranks run with them too, and the console lines a size-2 prompt adds are counted.

    CFGP_GPU_BLOCKS=4 CFGP_GPU_REPORT=$OUT/gpu_transport.json python -m pytest -q tests/test_transport_gpu.py
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from support.gpu_ltx2 import CAPTION_CHANNELS, GpuComfyServer, build_full_width_ltxav
from support.tiny_ltx2 import build_tiny_ltx_audio_vae, ltx2_sampler_graph, ltxav_available

pytestmark = [pytest.mark.server, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BLOCKS = int(os.environ.get("CFGP_GPU_BLOCKS", "4"))
WIDTH, HEIGHT, LENGTH = 768, 512, 121
STEPS = int(os.environ.get("CFGP_GPU_STEPS", "4"))
LAUNCH_ARGS = os.environ.get("CFGP_GPU_ARGS", "").split()
LINES_PER_RANK = 10  # console lines a size-2 prompt may add per rank beyond a size-1 prompt (group start included)
REPORT: dict = {"blocks": BLOCKS, "shape": [WIDTH, HEIGHT, LENGTH], "steps": STEPS, "launch_args": LAUNCH_ARGS,
                "runs": {}}


def _smaps(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return {k: out.get(k) for k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean", "Shared_Dirty",
                                    "Private_Clean", "Private_Dirty")}


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    if not ltxav_available():
        pytest.skip("this ComfyUI has no LTX-2 audio+video model")
    root = tmp_path_factory.mktemp("gpu")
    t0 = time.monotonic()
    model = root / "ltx2_full_width.safetensors"
    REPORT["params"] = build_full_width_ltxav(model, BLOCKS)
    REPORT["build_s"] = round(time.monotonic() - t0, 1)
    audio_vae = build_tiny_ltx_audio_vae(root / "tiny_ltx_audio_vae.safetensors")
    server = GpuComfyServer(models={"diffusion_models/ltx2_full_width.safetensors": model,
                                    "checkpoints/tiny_ltx_audio_vae.safetensors": audio_vae},
                            env={"CFG_PARALLEL_BACKEND": "gloo"}, extra_args=LAUNCH_ARGS, startup_timeout=180)
    server.start()
    try:
        yield server
    finally:
        REPORT["dynamic_vram_log"] = [l for l in server.log_text().splitlines() if "DynamicVRAM" in l]
        REPORT["cfg_parallel_log"] = [l for l in server.log_text().splitlines() if "cfg-parallel" in l][-12:]
        if os.environ.get("CFGP_GPU_REPORT"):
            Path(os.environ["CFGP_GPU_REPORT"]).write_text(json.dumps(REPORT, indent=1, default=str))
        server.stop()


def _run(server, size: int, weight_dtype: str, nonce: int) -> dict:
    g = ltx2_sampler_graph("ltx2_full_width.safetensors", size=size, audio_vae="tiny_ltx_audio_vae.safetensors",
                           channels=2 * CAPTION_CHANNELS, steps=STEPS, width=WIDTH, height=HEIGHT, length=LENGTH,
                           prefix=f"latents/gpu_{weight_dtype}_{size}", nonce=nonce)
    g["1"]["inputs"]["weight_dtype"] = weight_dtype
    g["9"]["inputs"]["devices"] = ",".join(["cuda:0"] * size)
    t0 = time.monotonic()
    entry = server.run(g, timeout=900)
    seconds = time.monotonic() - t0
    out = {"video": server.saved_latent(entry, node_id="10"), "audio": server.saved_latent(entry, node_id="11")}
    rec = {"seconds": round(seconds, 2), "server": _smaps(server.pid)}
    if size > 1:
        status = server.group_status()
        rec["group"] = {k: status.get(k) for k in ("state", "backend", "devices", "pids")}
        rec["ranks"] = {str(pid): _smaps(pid) for pid in status.get("pids") or []}
        rec["last_job"] = status.get("last_job")
    REPORT["runs"][f"{weight_dtype}/size{size}/{nonce}"] = rec
    return out


def test_server_runs_with_dynamic_vram(gpu_server):
    assert "DynamicVRAM support detected and enabled" in gpu_server.log_text()


def _lines(server) -> int:
    with open(server.log_path, "rb") as f:
        return sum(1 for _ in f)


def test_size2_adds_a_few_console_lines_and_runs_with_the_launch_options(gpu_server):
    """The first size-2 prompt (the group starts; each rank runs dynamic VRAM): its console lines
    against a size-1 prompt's, and every rank's effective configuration against the server's."""
    n0 = _lines(gpu_server)
    serial = _run(gpu_server, 1, "default", 31)
    n1 = _lines(gpu_server)
    parallel = _run(gpu_server, 2, "default", 32)
    n2 = _lines(gpu_server)
    status = gpu_server.group_status()
    REPORT["console_lines"] = {"size1": n1 - n0, "size2_first": n2 - n1}
    REPORT["comfyui_config"] = status.get("comfyui_config")
    REPORT["rank_setup"] = status.get("rank_setup")
    REPORT["config_differences"] = status.get("config_differences")
    for part in ("video", "audio"):
        REPORT["runs"][f"launch_args/equal_{part}"] = eq = torch.equal(parallel[part], serial[part])
        assert eq, part
    # the ranks page-locked the shared weights for their first copy to the GPU (and said so once each)
    REPORT["page_locked"] = locked = [line for line in gpu_server.log_text().splitlines()
                                      if "page-locked for the GPU" in line]
    assert len(locked) == 2, locked
    assert status["config_differences"] == [[], []]
    assert all(s["dynamic_vram"] and s["aimdo_log_level"] == "INFO" for s in status["rank_setup"])
    assert n2 - n1 <= n1 - n0 + 2 * LINES_PER_RANK


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn"])
def test_size2_equals_size1_on_one_gpu(gpu_server, weight_dtype):
    nonce = 1 if weight_dtype == "default" else 3
    serial = _run(gpu_server, 1, weight_dtype, nonce)
    parallel = _run(gpu_server, 2, weight_dtype, nonce + 1)
    again = _run(gpu_server, 2, weight_dtype, nonce + 10)  # warm group, model held by the ranks
    for part in ("video", "audio"):
        assert torch.isfinite(serial[part]).all(), part
        eq = torch.equal(parallel[part], serial[part])
        REPORT["runs"][f"{weight_dtype}/equal_{part}"] = eq
        if not eq:
            REPORT["runs"][f"{weight_dtype}/max_abs_diff_{part}"] = float(
                (parallel[part].float() - serial[part].float()).abs().max())
        assert eq, part
        assert torch.equal(again[part], serial[part]), part


def _run_ksampler(server, size: int, nonce: int) -> dict:
    """The same model under KSampler with the CFG Parallel node (MODEL -> MODEL) before it: a
    user's KSampler graph with one node added, on the GPU with dynamic VRAM."""
    g = ltx2_sampler_graph("ltx2_full_width.safetensors", size=size, audio_vae="tiny_ltx_audio_vae.safetensors",
                           channels=2 * CAPTION_CHANNELS, steps=STEPS, width=WIDTH, height=HEIGHT, length=LENGTH,
                           prefix=f"latents/gpu_ksampler_{size}", nonce=nonce)
    for nid in ("9", "12", "15", "20", "6", "8"):
        g.pop(nid)
    g["40"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {
        "model": ["1", 0], "parallel_size": size, "devices": ",".join(["cuda:0"] * size)}}
    g["41"] = {"class_type": "KSampler", "inputs": {
        "model": ["40", 0], "seed": 5, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
        "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["13", 0], "denoise": 1.0}}
    g["14"]["inputs"]["av_latent"] = ["41", 0]
    t0 = time.monotonic()
    entry = server.run(g, timeout=900)
    REPORT["runs"][f"ksampler/size{size}/{nonce}"] = {"seconds": round(time.monotonic() - t0, 2)}
    return {"video": server.saved_latent(entry, node_id="10"), "audio": server.saved_latent(entry, node_id="11")}


def test_cfg_parallel_node_under_ksampler_size2_equals_size1(gpu_server):
    serial = _run_ksampler(gpu_server, 1, 21)
    parallel = _run_ksampler(gpu_server, 2, 22)
    for part in ("video", "audio"):
        assert torch.isfinite(serial[part]).all(), part
        eq = torch.equal(parallel[part], serial[part])
        REPORT["runs"][f"ksampler/equal_{part}"] = eq
        assert eq, part
