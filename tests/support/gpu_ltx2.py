"""A full-width LTX-2 audio+video model on the GPU and ComfyUI's main.py as a user starts it
there: shared by tests/test_transport_gpu.py and bench/bench_first_prompt_gpu.py."""
from __future__ import annotations

from pathlib import Path

import torch

from devkit.comfy_server import ComfyServer

CAPTION_CHANNELS = 3840  # LTXAVModel's default: a processed text embedding is 2 x 3840 wide


class GpuComfyServer(ComfyServer):
    """main.py as a user starts it on a GPU machine (no --cpu: dynamic VRAM is on by default).
    A folder with an index.html stands in for the frontend package where it is not installed."""

    def command(self) -> list[str]:
        cmd = [c for c in super().command() if c != "--cpu"]
        front = self.base_dir / "frontend"
        front.mkdir(exist_ok=True)
        (front / "index.html").write_text("<html></html>")
        return cmd + ["--front-end-root", str(front)]


def build_full_width_ltxav(path: Path, blocks: int, seed: int = 0) -> int:
    """ComfyUI's LTXAVModel at its default (full) widths, `blocks` blocks, random bf16 weights
    N(0, 0.02) drawn on the GPU; saved without metadata (detection alone, as a real checkpoint).
    Returns the parameter count (48 blocks: 19.6 B parameters, a 39 GB file; building it
    peaks at about twice that in host memory)."""
    import comfy.ops
    from comfy.ldm.lightricks.av_model import LTXAVModel
    from safetensors.torch import save_file

    meta = LTXAVModel(num_layers=blocks, operations=comfy.ops.disable_weight_init, dtype=torch.bfloat16,
                      device="meta")
    shapes = [(k, tuple(v.shape)) for k, v in meta.state_dict().items()]
    del meta
    gen = torch.Generator(device="cuda").manual_seed(seed)
    sd = {k: torch.randn(s, generator=gen, device="cuda").mul_(0.02).to(torch.bfloat16).cpu() for k, s in shapes}
    params = sum(t.numel() for t in sd.values())
    save_file(sd, str(path))
    return params
