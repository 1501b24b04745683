"""The batch split together with the sequence split: ranks = batch groups x branch groups x
sequence degree (real gloo CPU processes, tiny real LTX-Video).

Batch 2 on 4 ranks with sequence degree 2 (cfg 1: one branch): each batch group samples one
sample split over its 2 ranks. Against the same sequence groups run without the batch split
(each sample alone at parallel size 2, sequence 2: the same computation, bit for bit), and
against the whole batch at parallel size 1 (the batch dimension of every matmul and the
sequence split round differently: a measured bound). The same with cfg 3 on 8 ranks: 2 batch
groups x 2 branch groups (cond | negative) x sequence 2 (about a minute on 2 CPU cores).
"""
from __future__ import annotations

import pytest
import torch

from support.paths import comfyui_available

if comfyui_available():
    import comfy.samplers

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.errors import GroupConfigError
    from cfg_runtime.group import shutdown_group
    from cfg_runtime.guidance.presets import standard_cfg
    from devkit import tiny_models as tm

pytestmark = pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI (COMFYUI_DIR)")

STEPS, SEED = 4, 7
BOUND = 1e-4  # max |split - size 1| (outputs of magnitude ~1-10, fp32)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch_seq_models")
    return tm.load_tiny_ltxv(tm.build_tiny_ltxv(d / "ltxv.safetensors", seed=0, std=0.2))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every rank
    yield
    torch.set_num_threads(before)
    if comfyui_available():
        shutdown_group()


def _noise(batch: int) -> torch.Tensor:
    return torch.randn(batch, 128, 3, 1, 3, generator=torch.Generator().manual_seed(SEED))  # 9 tokens


def sample(model, noise: torch.Tensor, size: int, degree: int = 1, split: int = 1, cfg: float = 1.0,
           rescale: float = 0.0):
    settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=300, start_timeout_s=300,
                                sequence_degree=degree, batch_split=split)
    guider = MultiBranchGuider(model, standard_cfg(cfg, rescale=rescale), settings)
    guider.set_conds(tm.tiny_conditioning(1), tm.tiny_conditioning(2))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS).cpu()
    with torch.inference_mode():
        out = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas,
                            disable_pbar=True, seed=SEED)
    return out, guider.last_run


def figures(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = got.double() - ref.double()
    return float(diff.abs().max()), float(diff.norm() / ref.double().norm())


def test_batch_2_x_sequence_2_on_4_ranks(model):
    noise = _noise(2)
    whole, _ = sample(model, noise, 1)
    got, run = sample(model, noise, 4, degree=2, split=2)
    assert [r.get("batch") for r in run["per_rank"]] == [[2, 0, 1], [2, 0, 1], [2, 1, 2], [2, 1, 2]]
    assert all(r["layout"] == [1, 2] and r["sequence"]["evaluations"] > 0 for r in run["per_rank"])
    alone = torch.cat([sample(model, noise[i:i + 1], 2, degree=2)[0] for i in range(2)])
    print(f"\nbatch 2 x sequence 2 (4 ranks) vs each sample alone at 1 x sequence 2: bit-exact "
          f"{torch.equal(got, alone)}, max abs {figures(got, alone)[0]:.3g}")
    assert torch.equal(got, alone)
    abs_, rel = figures(got, whole)
    print(f"batch 2 x sequence 2 (4 ranks) vs size 1: max abs {abs_:.3g}, rel L2 {rel:.3g}")
    assert abs_ <= BOUND


def test_auto_weighs_the_three_axes(model):
    """One branch, batch 2, 4 ranks, both splits auto: 2 batch groups x sequence 2 (predicted 0.525
    of one sample-step against 0.575 for sequence 4 over the whole batch)."""
    _, run = sample(model, _noise(2), 4, degree=0, split=0)
    assert [r.get("batch", [None])[0] for r in run["per_rank"]] == [2] * 4
    assert all(r["layout"] == [1, 2] for r in run["per_rank"])


def test_refusals(model):
    with pytest.raises(GroupConfigError, match="does not divide the 1 rank"):
        sample(model, _noise(4), 4, degree=2, split=4)
    with pytest.raises(GroupConfigError, match="guidance rescale"):
        sample(model, _noise(2), 2, split=2, cfg=3.0, rescale=0.5)


def test_batch_2_x_branches_2_x_sequence_2_on_8_ranks(model):
    """cfg 3 (cond | negative): 2 batch groups x 2 branch groups x sequence 2, against the same
    branch x sequence groups with each sample alone on 4 ranks (bit for bit) and size 1."""
    noise = _noise(2)
    whole, _ = sample(model, noise, 1, cfg=3.0)
    got, run = sample(model, noise, 8, degree=2, split=2, cfg=3.0)
    assert [r.get("batch")[1:] for r in run["per_rank"]] == [[0, 1]] * 4 + [[1, 2]] * 4
    assert all(r["layout"] == [2, 2] for r in run["per_rank"])
    alone = torch.cat([sample(model, noise[i:i + 1], 4, degree=2, cfg=3.0)[0] for i in range(2)])
    assert torch.equal(got, alone)
    abs_, rel = figures(got, whole)
    print(f"\nbatch 2 x 2 branches x sequence 2 (8 ranks) vs size 1: max abs {abs_:.3g}, rel L2 {rel:.3g}")
    assert abs_ <= BOUND


@pytest.mark.parametrize("node", ["Mahiro", "VideoLinearCFGGuidance"])
def test_guidance_nodes_that_mix_the_batch_are_refused(model, node):
    """Core nodes whose functions mix the samples (Mahiro: one mean; VideoLinearCFGGuidance: a scale
    per batch row): a forced batch split is refused before any rank samples."""
    import comfy_extras.nodes_mahiro as mahiro
    import comfy_extras.nodes_video_model as video

    if node == "Mahiro":
        out = mahiro.Mahiro.execute(model)
        patched = out.args[0] if hasattr(out, "args") else out[0]
    else:
        patched = video.VideoLinearCFGGuidance().patch(model, 1.0)[0]
    with pytest.raises(GroupConfigError, match=node):
        sample(patched, _noise(2), 2, split=2, cfg=3.0)
