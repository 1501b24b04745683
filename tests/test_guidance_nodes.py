"""ComfyUI's guidance nodes behind the CFG Parallel node, through a real ComfyUI server.

Every node of the family that patches the model's guidance (PerturbedAttentionGuidance,
SkipLayerGuidanceDiT/Simple/SD3, SelfAttentionGuidance, PerpNeg, RescaleCFG, CFGZeroStar,
CFGNorm, APG, TCFG, Mahiro, FreSca, Epsilon Scaling, TemporalScoreRescaling, RenormCFG,
VideoLinear/TriangleCFGGuidance) sits between the loader and CFG Parallel in a KSampler
graph; its Python closures reach the ranks by value (cloudpickle) and run there as core
runs them. One prompt per model holds every node three times: CFG Parallel at size 1, at
size 2 (a persistent 2-rank gloo group on the CPU), and without the pack (core); a second
prompt runs the nodes whose extra pass becomes a branch at size 3 (3 passes on 3 ranks).
Sizes 2 and 3 must equal size 1 bit for bit; core may differ from size 1 only by its batching rounding
(core evaluates cond and uncond in one batched forward, the pack one branch per forward):
within ``BOUND``. The widgets are each node's defaults (read from /object_info, so the
test follows the node's own schema on every ComfyUI version) with a few overrides.
Tiny random-weight models built with ComfyUI's classes: an SD 1.5 UNet with an attention
middle block (PAG and SAG perturb it) and a one-block Wan 2.1.
"""
from __future__ import annotations

import pytest
import torch

from support.paths import comfyui_available

pytestmark = pytest.mark.server

SD, WAN = "cfgp_tiny_sd15_mid.safetensors", "cfgp_tiny_wan_slg.safetensors"
BOUND = 1e-5  # |core - pack at size 1| / max(1, max |out|): float32 rounding, batched against separate forwards
VARIANTS = ("s1", "s2", "core")
PASS_NODES = {"PerturbedAttentionGuidance", "PerpNeg", "SkipLayerGuidanceDiT", "SkipLayerGuidanceSD3",
              "SkipLayerGuidanceDiT+CFGZeroStar"}  # their extra pass is a branch: size 3 runs 3 passes at once

# node -> widget overrides (the rest: the node's defaults)
SD_NODES = {
    "PerturbedAttentionGuidance": {"scale": 2.0},
    "RescaleCFG": {"multiplier": 0.7},
    "CFGNorm": {"strength": 0.9},
    "APG": {"eta": 0.5, "norm_threshold": 5.0, "momentum": -0.5},
    "TCFG": {},
    "Mahiro": {},
    "FreSca": {"scale_low": 1.0, "scale_high": 1.25, "freq_cutoff": 2},
    "Epsilon Scaling": {"scaling_factor": 1.01},
    "PerpNeg": {"neg_scale": 1.0},
    "RenormCFG": {"cfg_trunc": 100.0, "renorm_cfg": 1.0},
    "VideoLinearCFGGuidance": {"min_cfg": 1.5},
    "VideoTriangleCFGGuidance": {"min_cfg": 1.5},
}
WAN_NODES = {
    "SkipLayerGuidanceDiT": {"double_layers": "0", "single_layers": "", "scale": 3.0, "start_percent": 0.0,
                             "end_percent": 1.0},
    "SkipLayerGuidanceDiTSimple": {"double_layers": "0", "single_layers": "", "start_percent": 0.0,
                                   "end_percent": 1.0},
    "SkipLayerGuidanceSD3": {"layers": "0", "scale": 3.0, "start_percent": 0.0, "end_percent": 1.0},
    "CFGZeroStar": {},
    "TemporalScoreRescaling": {},
    "SkipLayerGuidanceDiT+CFGZeroStar": {},  # Wan 2.1 recipes chain the two
}
MEASURED: dict[str, float] = {}


def build_tiny_sd15_mid_attention(path, seed: int = 0):
    """The tiny SD 1.5 UNet of support.tiny_families with one transformer block in the middle
    block, where PerturbedAttentionGuidance and SelfAttentionGuidance act."""
    from support import tiny_families as tf
    from support.paths import import_comfy
    from devkit.tiny_models import init_weights

    import_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    config = {**tf.TINY_SD15_CONFIG, "transformer_depth_middle": 1}
    model = UNetModel(**config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    init_weights(model, seed, 0.05)
    return tf._save(model.state_dict(), path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from support import tiny_ltx2 as t2
    from devkit.comfy_server import ComfyServer
    from support.paths import ComfyUIMissing

    if not comfyui_available():
        pytest.skip("needs ComfyUI (COMFYUI_DIR)")
    try:
        s = ComfyServer(env={"OMP_NUM_THREADS": "1"})
    except ComfyUIMissing as e:
        pytest.skip(str(e))
    s.start(wait=False)
    try:
        d = tmp_path_factory.mktemp("guidance_nodes")
        s.add_model("diffusion_models", SD, build_tiny_sd15_mid_attention(d / SD))
        s.add_model("diffusion_models", WAN, t2.build_tiny_wan(d / WAN, seed=3))
        s.wait_ready()
    except BaseException:
        s.stop()
        raise
    try:
        yield s
    finally:
        s.stop()


def cond(seed: int, channels: int) -> dict:
    return {"class_type": "CFGPTestConditioning", "inputs": {"seed": seed, "tokens": 8, "channels": channels,
                                                              "nonce": 0}}


def node_inputs(server, node: str, model: list, overrides: dict) -> dict:
    """The node's widgets at their defaults, with `overrides`, on `model` (PerpNeg: an empty conditioning)."""
    info = server.object_info(node)[node]["input"]
    inputs = {}
    for group in ("required", "optional"):
        for name, spec in info.get(group, {}).items():
            kind, opts = spec[0], spec[1] if len(spec) > 1 else {}
            if kind == "MODEL":
                inputs[name] = model
            elif kind == "CONDITIONING":
                inputs[name] = ["empty", 0]
            elif isinstance(opts, dict) and "default" in opts:
                inputs[name] = opts["default"]
            elif isinstance(kind, list):
                inputs[name] = kind[0]
    return {**inputs, **overrides}


def patched(server, g: dict, node: str, model: list, tag: str, table: dict) -> list:
    """`model` through the guidance node(s) `node` ('A+B' chains them)."""
    for i, name in enumerate(node.split("+")):
        g[f"{tag}n{i}"] = {"class_type": name, "inputs": node_inputs(server, name, model, table.get(name, {}))}
        model = [f"{tag}n{i}", 0]
    return model


def graph(server, loader: str, channels: int, latent: dict, table: dict, cfg: float = 4.0, variants=VARIANTS):
    g = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": loader, "weight_dtype": "default"}},
         "pos": cond(1, channels), "neg": cond(2, channels), "empty": cond(3, channels), "lat": latent}
    if loader == WAN:
        g["ms"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["unet", 0], "shift": 8.0}}
    base = ["ms", 0] if loader == WAN else ["unet", 0]
    saves = {}
    for k, node in enumerate(table):
        for v in variants:
            tag = f"k{k}{v}"
            model = patched(server, g, node, base, tag, table)
            if v != "core":
                g[f"{tag}cp"] = {"class_type": "CFGParallelMultiGPU_Model", "inputs": {
                    "model": model, "parallel_size": int(v[1]), "devices": "cpu"}}
                model = [f"{tag}cp", 0]
            g[f"{tag}ks"] = {"class_type": "KSampler", "inputs": {
                "model": model, "seed": 7, "steps": 2, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
                "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "denoise": 1.0}}
            g[f"{tag}o"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{tag}ks", 0],
                                                                   "filename_prefix": f"latents/gn_{tag}"}}
            saves.setdefault(node, {})[v] = f"{tag}o"
    return g, saves


def check(server, entry, saves: dict, label: str) -> list[str]:
    """Size 2 == size 1 bit for bit, and what separates core from size 1 (problems, as text)."""
    s1, s2 = (server.saved_latent(entry, saves[v]) for v in ("s1", "s2"))
    assert torch.isfinite(s1).all() and s1.abs().max() > 0, label
    problems = [] if torch.equal(s1, s2) else [f"{label}: max |size 2 - size 1| = {(s1 - s2).abs().max()}"]
    diff, top = float((server.saved_latent(entry, saves["core"]) - s1).abs().max()), float(s1.abs().max())
    MEASURED[label] = diff
    print(f"\nMEASURED {label}: max |core - node at size 1| = {diff:.3g} (max |out| {top:.3g})")
    if diff > BOUND * max(1.0, top):
        problems.append(f"{label}: core and the pack at size 1 differ by {diff} (max |out| {top})")
    return problems


SD_LATENT = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
WAN_LATENT = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                  "batch_size": 1}}
TABLES = {"SD1.5": (SD, 768, SD_LATENT, SD_NODES), "Wan": (WAN, 4096, WAN_LATENT, WAN_NODES)}


@pytest.fixture(scope="module")
def runs(server) -> dict:
    """Per model: one prompt with every node at sizes 1 and 2 and without the pack; then, for both
    models, one prompt with the nodes that add a pass at size 3 (two group starts in all, not one
    per chain). {label: (entry, saves, entry at size 3, saves at size 3)}."""
    first = {}
    for label, (loader, channels, latent, table) in TABLES.items():
        g, saves = graph(server, loader, channels, latent, table)
        first[label] = (server.run(g, timeout=900), saves)
    out = {}
    for label, (loader, channels, latent, table) in TABLES.items():
        passes = {k: v for k, v in table.items() if k in PASS_NODES}
        g3, saves3 = graph(server, loader, channels, latent, passes, variants=("s3",))
        out[label] = first[label] + (server.run(g3, timeout=900), saves3)
    return out


def _check_table(server, runs, label):
    entry, saves, entry3, saves3 = runs[label]
    problems = [p for node, s in saves.items() for p in check(server, entry, s, f"{label} {node}")]
    for node, s in saves3.items():
        s1, s3 = server.saved_latent(entry, saves[node]["s1"]), server.saved_latent(entry3, s["s3"])
        if not torch.equal(s1, s3):
            problems.append(f"{label} {node}: max |size 3 - size 1| = {(s1 - s3).abs().max()}")
    assert not problems, "\n".join(problems)
    return entry, saves


def test_sd_guidance_nodes(server, runs):
    entry, saves = _check_table(server, runs, "SD1.5")
    # the node changes the result: not the plain CFG of the same graph
    plain = server.saved_latent(entry, saves["PerturbedAttentionGuidance"]["s1"])
    assert not torch.equal(plain, server.saved_latent(entry, saves["RescaleCFG"]["s1"]))


def test_wan_guidance_nodes(server, runs):
    _check_table(server, runs, "Wan")


def test_extra_pass_runs_on_its_own_rank(server, runs):
    """PAG at size 3: cond, negative and the perturbed pass on three ranks, in the plan log and in
    Group Status; the same three passes under the Multi-Branch Guider (standard_cfg) at sizes 1 and 3."""
    from support.tiny_ltx2 import POLICY_DEFAULTS

    g, _ = graph(server, SD, 768, SD_LATENT, {"PerturbedAttentionGuidance": {"scale": 2.0}}, variants=("s3",))
    g["pol"] = {"class_type": "CFGPolicyBuilder", "inputs": {**POLICY_DEFAULTS, "preset": "standard_cfg",
                                                             "cfg": 4.0}}
    g["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
    g["ksel"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["sig"] = {"class_type": "BasicScheduler", "inputs": {"model": ["unet", 0], "scheduler": "simple", "steps": 2,
                                                           "denoise": 1.0}}
    for size in (1, 3):
        g[f"mb{size}"] = {"class_type": "MultiBranchGuider", "inputs": {
            "model": ["k0s3n0", 0], "positive": ["pos", 0], "negative": ["neg", 0], "policy": ["pol", 0],
            "parallel_size": size, "devices": "cpu", "plan": "cost_balanced", "keep_model_loaded": True,
            "step_timeout_s": 120.0}}
        g[f"mx{size}"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": [f"mb{size}", 0], "sampler": ["ksel", 0], "sigmas": ["sig", 0],
            "latent_image": ["lat", 0]}}
        g[f"mo{size}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"mx{size}", 0],
                                                                 "filename_prefix": f"latents/gn_mb{size}"}}
    entry = server.run(g, timeout=600)
    assert torch.equal(server.saved_latent(entry, "mo1"), server.saved_latent(entry, "mo3"))
    assert torch.equal(server.saved_latent(entry, "mo1"), server.saved_latent(entry, "k0s3o"))  # = KSampler's
    per_rank = server.group_status()["last_job"]["per_rank"]
    assert [sorted(r["forwards"]) for r in per_rank] == [["cond"], ["negative"], ["pag"]], per_rank
    assert "rank 0: cond; rank 1: negative; rank 2: pag" in server.log_text()


def test_self_attention_guidance_size1_and_refusal(server):
    """SelfAttentionGuidance keeps the negative pass's attention in its closure for its own extra
    pass: size 1 runs it as core does; size 2 is refused, naming the node the user has."""
    latent = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    table = {"SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0}}
    g, saves = graph(server, SD, 768, latent, table)
    s = saves["SelfAttentionGuidance"]
    entry = server.run({k: v for k, v in g.items() if not k.startswith("k0s2")}, timeout=600)
    s1, core = server.saved_latent(entry, s["s1"]), server.saved_latent(entry, s["core"])
    diff, top = float((core - s1).abs().max()), float(s1.abs().max())
    MEASURED["SD1.5 SelfAttentionGuidance"] = diff
    print(f"\nMEASURED SD1.5 SelfAttentionGuidance: max |core - node at size 1| = {diff:.3g} (max |out| {top:.3g})")
    assert diff <= BOUND * max(1.0, top)
    g2, _ = graph(server, SD, 768, latent, table)
    err = server.run_failing({k: v for k, v in g2.items() if k.startswith("k0s2") or not k.startswith("k0")})
    assert "SelfAttentionGuidance" in err and "the CFG Parallel node" in err and "parallel size 1" in err, err
