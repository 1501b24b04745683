"""Every core sampler and scheduler through the Multi-Branch Guider, in process.

* size 2 (one persistent gloo group of two CPU ranks, cond on one rank and negative on the
  other) equals size 1 bit for bit, for all of ``KSampler.SAMPLERS`` (ancestral and SDE
  samplers draw noise from the seed on every rank) on a flow model (tiny LTX-Video, CONST),
  the samplers whose arithmetic depends on the model type also on an EPS model (the same
  model behind core ``ModelSamplingDiscrete`` eps, as a graph would patch it), and all of
  ``KSampler.SCHEDULERS`` on both;
* the ``*_cfg_pp`` samplers (they read ``uncond_denoised`` in a post-CFG function, and set
  ``disable_cfg1_optimization`` so core evaluates the negative even at cfg 1) get what core's
  CFGGuider gives them: the pack at size 1 stays within ``BOUND`` of core, the bound plain
  euler meets (core batches cond and uncond into one forward, the pack runs them apart: only
  rounding differs). Handing them the combined result instead (the old behaviour) makes
  cfg_pp behave like its plain twin: more than 100 x ``BOUND`` away.
"""
from __future__ import annotations

import pytest
import torch

from support.paths import comfyui_available
from support.sampling import noise_for, one_thread, sigmas_for

if comfyui_available():
    import comfy.samplers
    import comfy.sd
    from comfy_extras.nodes_custom_sampler import Guider_Basic
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    from cfg_runtime.adapters.sampling.guider import MultiBranchGuider, ParallelSettings
    from cfg_runtime.group import shutdown_group
    from cfg_runtime.guidance.presets import standard_cfg
    from devkit import tiny_models as tm

    SAMPLERS = list(comfy.samplers.KSampler.SAMPLERS)
    SCHEDULERS = list(comfy.samplers.KSampler.SCHEDULERS)
else:  # the module skips below
    SAMPLERS, SCHEDULERS = [], []

pytestmark = pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI (COMFYUI_DIR)")

FAMILIES = ("flow", "eps")
# samplers with model-type-specific arithmetic (ancestral/SDE noise scaling, ddpm/lcm/ddim/uni_pc steps)
EPS_SAMPLERS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                "dpmpp_3m_sde", "ddpm", "lcm", "ddim", "uni_pc", "er_sde", "sa_solver", "seeds_2")
CFG_PP = [s for s in SAMPLERS if s.endswith("cfg_pp")]
STEPS, SEED, CFG = 4, 11, 3.0
BOUND = 1e-4  # |pack - core| on outputs of magnitude ~10: float32 rounding, amplified over the steps


class Family:
    """A loaded tiny model with its latent and conditioning."""

    def __init__(self, model, latent: torch.Tensor, positive, negative) -> None:
        self.model, self.latent, self.positive, self.negative = model, latent, positive, negative

    def sigmas(self, scheduler: str = "simple", steps: int = STEPS) -> torch.Tensor:
        return sigmas_for(self.model, steps, scheduler)


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Family]:
    d = tmp_path_factory.mktemp("sampler_models")
    # std 0.2: the conditioning moves the tiny LTXV output clearly (cond != uncond)
    flow = comfy.sd.load_diffusion_model(str(tm.build_tiny_ltxv(d / "ltxv.safetensors", seed=0, std=0.2)))
    eps = _node_out(ModelSamplingDiscrete().patch(flow, "eps", False))
    latent, pos, neg = torch.zeros(1, 128, 2, 2, 2), tm.tiny_conditioning(1), tm.tiny_conditioning(2)
    return {"flow": Family(flow, latent, pos, neg), "eps": Family(eps, latent, pos, neg)}


def _node_out(out):
    return out.args[0] if hasattr(out, "args") else out[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread here and on each rank (they copy this count): 2 ranks on 2 cores."""
    with one_thread():
        yield


@pytest.fixture(scope="module", autouse=True)
def _no_group_left():
    yield
    if comfyui_available():
        shutdown_group()


def sample(guider, fam: Family, sampler: str, sigmas: torch.Tensor) -> torch.Tensor:
    """What SamplerCustomAdvanced does with a guider (under inference mode, as ComfyUI runs nodes)."""
    noise = noise_for(fam.latent, SEED)
    with torch.inference_mode():
        out = guider.sample(noise, fam.latent, comfy.samplers.sampler_object(sampler), sigmas, disable_pbar=True,
                            seed=SEED)
    assert torch.isfinite(out).all(), sampler
    return out


def pack(fam: Family, size: int, cfg: float = CFG, negative: bool = True) -> MultiBranchGuider:
    settings = ParallelSettings(world_size=size, devices="cpu", step_timeout_s=120, start_timeout_s=300)
    guider = MultiBranchGuider(fam.model, standard_cfg(cfg), settings)
    guider.set_conds(fam.positive, fam.negative if negative else None)
    return guider


def core(fam: Family, cfg: float) -> comfy.samplers.CFGGuider:
    guider = comfy.samplers.CFGGuider(fam.model)
    guider.set_conds(fam.positive, fam.negative)
    guider.set_cfg(cfg)
    return guider


def assert_split_over_two_ranks(guider: MultiBranchGuider) -> None:
    forwards = [r["forwards"] for r in guider.last_run["per_rank"]]
    assert guider.last_run["ranks"] == 2
    assert sorted(k for f in forwards for k in f) == ["cond", "negative"], forwards  # one branch per rank


def _size2_equals_size1(fam: Family, sampler: str, sigmas: torch.Tensor, cfg: float = CFG) -> torch.Tensor:
    serial = sample(pack(fam, 1, cfg), fam, sampler, sigmas)
    par = pack(fam, 2, cfg)
    parallel = sample(par, fam, sampler, sigmas)
    assert_split_over_two_ranks(par)
    assert torch.equal(parallel, serial), f"{sampler}: max |size2 - size1| = {(parallel - serial).abs().max():.3g}"
    return serial


@pytest.mark.parametrize("family,sampler", [("flow", s) for s in SAMPLERS] + [("eps", s) for s in EPS_SAMPLERS])
def test_every_sampler_size2_equals_size1(families, family, sampler):
    fam = families[family]
    sigmas = fam.sigmas()
    if sampler == "dpm_adaptive":
        sigmas = sigmas[-3:]  # it picks its own steps between the ends: keep the range (and its cost) small
    out = _size2_equals_size1(fam, sampler, sigmas)
    assert not torch.equal(out, fam.latent)


@pytest.mark.parametrize("family,scheduler", [(f, s) for f in FAMILIES for s in SCHEDULERS])
def test_every_scheduler_size2_equals_size1(families, family, scheduler):
    fam = families[family]
    sigmas = fam.sigmas(scheduler)
    assert sigmas.numel() == STEPS + 1 and torch.isfinite(sigmas).all()
    _size2_equals_size1(fam, "euler_ancestral", sigmas)  # draws noise every step


@pytest.mark.parametrize("cfg", [1.0, CFG])
@pytest.mark.parametrize("sampler", ["euler"] + CFG_PP)
def test_matches_core_cfg_guider(families, sampler, cfg):
    fam = families["flow"]
    sigmas = fam.sigmas()
    expected = sample(core(fam, cfg), fam, sampler, sigmas)
    ours = pack(fam, 1, cfg)
    got = sample(ours, fam, sampler, sigmas)
    diff = (got - expected).abs().max().item()
    assert diff <= BOUND, f"{sampler} at cfg {cfg}: max |pack - core| = {diff:.3g} > {BOUND}"
    if sampler != "euler":
        # core evaluates the negative for these even at cfg 1; so must the pack, on either rank count
        assert ours.last_run["forwards"].get("negative", 0) > 0
        if cfg == 1.0:
            par = pack(fam, 2, cfg)
            assert torch.equal(sample(par, fam, sampler, sigmas), got)
            assert_split_over_two_ranks(par)


@pytest.mark.parametrize("cfg", [1.0, CFG])
def test_cfg_pp_differs_from_its_plain_twin_far_beyond_the_bound(families, cfg):
    """The bound above can fail: giving cfg_pp the combined result as its uncond makes it euler."""
    fam = families["flow"]
    sigmas = fam.sigmas()
    cfg_pp = sample(core(fam, cfg), fam, "euler_cfg_pp", sigmas)
    plain = sample(core(fam, cfg), fam, "euler", sigmas)
    assert (cfg_pp - plain).abs().max().item() > 100 * BOUND


@pytest.mark.parametrize("sampler", ["euler", "euler_cfg_pp", "dpmpp_2m_cfg_pp"])
def test_without_negative_matches_core_basic_guider(families, sampler):
    """No negative connected, cfg 1: core hands cfg_pp a zero uncond (no conditioning); so does the pack."""
    fam = families["flow"]
    basic = Guider_Basic(fam.model)
    basic.set_conds(fam.positive)
    sigmas = fam.sigmas()
    expected = sample(basic, fam, sampler, sigmas)
    got = sample(pack(fam, 1, 1.0, negative=False), fam, sampler, sigmas)
    assert (got - expected).abs().max().item() <= BOUND
