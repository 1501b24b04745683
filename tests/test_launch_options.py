"""The ranks are the ComfyUI the user started: its launch options and its console.

Real ComfyUI servers started with options that change how the model computes (attention
backend and upcasting, unet precision, deterministic algorithms): size 2 == size 1 bit for bit,
and every rank reports the effective configuration of the ComfyUI process (Group Status JSON).
The console: at the default level a parallel prompt adds a few lines per rank; at --verbose
the ranks' records follow the ComfyUI process's level.
"""
from __future__ import annotations

import pytest
import torch

from devkit.comfy_server import ComfyServer
from devkit.tiny_models import tiny_ltxv_graph
from support.paths import ComfyUIMissing

pytestmark = pytest.mark.server

OPTION_SETS = {
    "pytorch_attention_bf16": ["--use-pytorch-cross-attention", "--bf16-unet", "--deterministic"],
    "split_attention_upcast_verbose": ["--use-split-cross-attention", "--force-upcast-attention", "--deterministic",
                                       "--verbose"],
}
EXPECTED = {  # what ComfyUI makes of the options, in the ComfyUI process and on every rank
    "pytorch_attention_bf16": {"attention": "attention_pytorch", "bf16_unet": True, "console_level": "INFO"},
    "split_attention_upcast_verbose": {"attention": "attention_split", "force_upcast_attention": True,
                                       "console_level": "DEBUG"},
}
LINES_PER_RANK = 6  # the bound on console lines a parallel prompt may add per rank at the default level


@pytest.fixture(scope="module", params=sorted(OPTION_SETS))
def server(request, tiny_ltxv_path):
    try:
        s = ComfyServer(extra_args=OPTION_SETS[request.param], env={"OMP_NUM_THREADS": "1"})
    except ComfyUIMissing as e:
        pytest.skip(str(e))
    s.add_model("diffusion_models", "tiny_ltxv.safetensors", tiny_ltxv_path)
    s.options = request.param
    with s:
        yield s


def guided(size: int, nonce: int) -> dict:
    g = tiny_ltxv_graph(steps=3, nonce=nonce, prefix=f"latents/launch_{size}_{nonce}")
    g["20"] = {"class_type": "CFGPolicyBuilder", "inputs": {
        "preset": "standard_cfg", "cfg": 3.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0,
        "video_cfg": 3.0, "video_stg": 1.0, "video_stg_blocks": "1", "video_modality": 1.0, "video_rescale": 0.7,
        "video_skip_step": 0, "audio_cfg": 3.0, "audio_stg": 1.0, "audio_stg_blocks": "1", "audio_modality": 1.0,
        "audio_rescale": 0.7, "audio_skip_step": 0, "custom_branches": "negative:negative:3.0"}}
    g["7"] = {"class_type": "MultiBranchGuider", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "policy": ["20", 0], "parallel_size": size,
        "devices": "cpu", "plan": "cost_balanced", "keep_model_loaded": True, "step_timeout_s": 120.0}}
    return g


def run_counting_lines(server, graph) -> tuple[torch.Tensor, list[str]]:
    """Run a prompt; its latent and the console lines it added (the server's stdout and stderr,
    where the ranks' own output lands too)."""
    before = len(server.log_text().splitlines())
    latent = server.saved_latent(server.run(graph, timeout=300))
    return latent, server.log_text().splitlines()[before:]


def test_a_parallel_prompt_adds_a_few_console_lines_per_rank(server):
    """Lines beyond what a size-1 prompt adds (its first: the model load), for the first size-2
    prompt (the group starts) and the next (warm): the group's start-up, the plan and the ranks'
    phases at the default level; at --verbose the ranks' records follow the ComfyUI process
    (ComfyUI's own lines of a rank, e.g. its device, arrive named by rank)."""
    _, serial = run_counting_lines(server, guided(1, nonce=11))
    _, parallel = run_counting_lines(server, guided(2, nonce=12))
    _, warm = run_counting_lines(server, guided(2, nonce=13))
    extra = len(parallel) - len(serial)
    print(f"{server.options}: size 1 adds {len(serial)} lines, size 2 {len(parallel)} (warm {len(warm)})")
    rank_lines = [line for line in parallel if line.startswith("[rank ") or "[rank " in line]
    if "--verbose" not in OPTION_SETS[server.options]:
        assert extra <= 2 * LINES_PER_RANK, "\n".join(parallel)
        assert len(warm) - len(serial) <= 2 * LINES_PER_RANK, "\n".join(warm)
        assert not any(" root: " in line for line in rank_lines), "\n".join(rank_lines)
    else:
        log = server.log_text()
        assert "[rank 0] root: " in log and "[rank 1] root: " in log, "\n".join(rank_lines[-20:])


def test_size2_equals_size1_and_ranks_run_with_the_launch_options(server):
    serial, _ = run_counting_lines(server, guided(1, nonce=1))
    parallel, _ = run_counting_lines(server, guided(2, nonce=2))
    assert torch.isfinite(serial).all()
    assert torch.equal(parallel, serial), f"max |d| {(parallel - serial).abs().max().item()}"
    status = server.group_status()
    here, ranks = status["comfyui_config"], status["rank_setup"]
    assert len(ranks) == 2 and status["config_differences"] == [[], []], status["config_differences"]
    for name in OPTION_SETS[server.options]:
        option = name.lstrip("-").replace("-", "_")
        assert here["args"][option] not in (False, None, []), option  # the server really runs with it
        assert all(r["args"][option] == here["args"][option] for r in ranks), option
    expected = EXPECTED[server.options]
    for setup in (here, *ranks):
        assert setup["attention"] == expected["attention"]
        assert setup["deterministic"] is True and setup["console_level"] == expected["console_level"]
        assert all(setup["args"][k] == v for k, v in expected.items() if k not in ("attention", "console_level"))
    assert [r["overridden"]["cpu"] for r in ranks] == [True, True]
    if "--bf16-unet" in OPTION_SETS[server.options]:
        assert "model weight dtype torch.bfloat16" in server.log_text()
