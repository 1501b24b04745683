"""The batch split: a latent batch over batch groups of CPU ranks (real gloo processes, tiny LTX-Video).

Against the whole batch at parallel size 1 (the serial reference), sample by sample: batch 4 on
2 and 4 ranks, batch 3 on 2 ranks (uneven: 2 + 1), batch x branches (2 groups x 2 branch ranks),
an ancestral sampler (per-step noise) and an SDE sampler (Brownian tree), a noise mask, and
per-sample conditioning. The batch split changes the batch dimension of every matmul, so the
comparison records the difference and bounds it (``BOUND``); ``test_split_is_bit_exact_here``
says whether these CPU kernels give the same bits.
"""
from __future__ import annotations

import pytest
import torch

from support.paths import comfyui_available

if comfyui_available():
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.adapters.sampling.model_wrapper import with_group_sampling
    from cfg_runtime.errors import GroupConfigError
    from cfg_runtime.group import shutdown_group
    from cfg_runtime.guidance.presets import standard_cfg
    from devkit import tiny_models as tm

pytestmark = pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI (COMFYUI_DIR)")

STEPS, SEED, CFG = 4, 11, 3.0
BOUND = 1e-4  # max |split - unsplit| on outputs of magnitude ~1-10 (float32 rounding of other matmul shapes)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch_models")
    return comfy.sd.load_diffusion_model(str(tm.build_tiny_ltxv(d / "ltxv.safetensors", seed=0, std=0.2)))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if comfyui_available():
        shutdown_group()


def sample(model, size: int, batch: int, sampler: str = "euler_ancestral", split: int = 1, mask=None,
           positive=None):
    settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=120, start_timeout_s=300,
                                batch_split=split)
    guider = MultiBranchGuider(model, standard_cfg(CFG), settings)
    guider.set_conds(positive or tm.tiny_conditioning(1), tm.tiny_conditioning(2))
    latent = torch.zeros(batch, 128, 2, 2, 2) if mask is None else _init_latent(batch)
    noise = Noise_RandomNoise(SEED).generate_noise({"samples": latent})
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS).cpu()
    with torch.inference_mode():
        out = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler), sigmas, denoise_mask=mask,
                            disable_pbar=True, seed=SEED)
    return out, guider.last_run


def _init_latent(batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(batch, 128, 2, 2, 2, generator=g)


def _mask(batch: int) -> torch.Tensor:
    m = torch.zeros(batch, 1, 2, 2, 2)
    m[:, :, :, :, 1] = 1.0
    m[1::2, :, 1] = 0.5  # per-sample rows
    return m


def compare(split: torch.Tensor, whole: torch.Tensor) -> float:
    assert split.shape == whole.shape
    diff = max((s - w).abs().max().item() for s, w in zip(split, whole))
    print(f"batch split: max |split - unsplit| per sample = {diff:.3g}, bit-exact: {torch.equal(split, whole)}")
    assert diff <= BOUND, f"max |split - unsplit| per sample = {diff:.3g} > {BOUND}"
    return diff


def batch_layout(run: dict) -> list:
    return [r.get("batch") for r in run["per_rank"]]


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde"])
def test_per_step_noise_is_the_whole_batch_rows(model, sampler):
    """Ancestral and SDE samplers: each group gets exactly its rows of the batch's per-step noise
    (a per-group draw differs from the whole batch by far more than BOUND)."""
    whole, _ = sample(model, 1, 4, sampler)
    got, _ = sample(model, 2, 4, sampler, split=2)
    compare(got, whole)
    first_two, _ = sample(model, 1, 2, sampler)  # what group 1 would get drawing for its own shape
    assert (first_two[:2] - whole[2:]).abs().max().item() > 100 * BOUND


def test_noise_mask_and_per_sample_conditioning(model):
    positive = [[torch.cat([tm.tiny_conditioning(s)[0][0] for s in (1, 3, 4)]),
                 {"attention_mask": torch.ones(3, 8, dtype=torch.long)}]]
    whole, _ = sample(model, 1, 3, mask=_mask(3), positive=positive)
    got, _ = sample(model, 2, 3, split=2, mask=_mask(3), positive=positive)
    compare(got, whole)


def ksampler(model, size: int, split: int, mask) -> torch.Tensor:
    """What KSampler runs (comfy.sample.sample) on a model through the CFG Parallel node's wrapper:
    the mask is the one core prepared, carried in the model options."""
    settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=120, start_timeout_s=300,
                                batch_split=split)
    patched = with_group_sampling(model, settings)
    latent = _init_latent(3)
    noise = comfy.sample.prepare_noise(latent, SEED)
    with torch.inference_mode():
        return comfy.sample.sample(patched, noise, STEPS, CFG, "euler_ancestral", "simple",
                                   tm.tiny_conditioning(1), tm.tiny_conditioning(2), latent, noise_mask=mask,
                                   disable_pbar=True, seed=SEED)


def test_cfg_parallel_node_under_ksampler_with_a_noise_mask(model):
    whole = ksampler(model, 1, 1, _mask(3))
    got = ksampler(model, 2, 2, _mask(3))
    compare(got, whole)
    assert (got - ksampler(model, 1, 1, None)).abs().max().item() > 100 * BOUND  # the mask is used


def test_auto_and_refusals(model):
    _, run = sample(model, 2, 4, split=0)  # auto: 2 ranks, 2 branches, batch 4 -> branch split (a tie: exact)
    assert batch_layout(run) == [None, None]
    with pytest.raises(GroupConfigError, match="latent batch is 1"):
        sample(model, 2, 1, split=2)
    with pytest.raises(GroupConfigError, match="must divide"):
        sample(model, 2, 4, split=3)


@pytest.mark.parametrize("size,batch,split,rows", [
    (2, 4, 2, [[2, 0, 2], [2, 2, 4]]),
    (2, 3, 2, [[2, 0, 2], [2, 2, 3]]),
    (4, 4, 4, [[4, 0, 1], [4, 1, 2], [4, 2, 3], [4, 3, 4]]),
    (4, 2, 2, [[2, 0, 1], [2, 0, 1], [2, 1, 2], [2, 1, 2]]),  # batch x branches: 2 groups x cond|negative
])
def test_batch_split_equals_whole_batch(model, size, batch, split, rows):
    whole, _ = sample(model, 1, batch)
    got, run = sample(model, size, batch, split=split)
    assert batch_layout(run) == rows
    if size == 4 and split == 2:
        forwards = [sorted(r["forwards"]) for r in run["per_rank"]]
        assert forwards == [["cond"], ["negative"], ["cond"], ["negative"]], forwards
    compare(got, whole)
