"""A guided step with ComfyUI's SkipLayerGuidanceDiT or PerturbedAttentionGuidance: size 1 and predicted size 3.

Builds a random-weight model with ComfyUI's own classes on one GPU (``--model wan``: Wan 2.1
1.3B dims, 30 blocks, dim 1536, 832x480x33; ``--model sdxl``: the SDXL UNet, 1024x1024),
patches it with the core node (SLG on block 9 / PAG on the middle block) and runs the pack's
own guided step (``BranchGuider.predict_noise``: cond, negative and the node's pass one after
another on one GPU, then the node's arithmetic) as parallel size 1 runs it, timing each
branch's forward on its own, and a cfg-1 run (one forward a step) for reference. The step
with each branch on its own GPU (3 ranks) is predicted, not measured: the slowest branch's
forward + the measured combine + the step's other work at size 1 (the all-gather of three
latents, a few MB, is added at the link's rate by the reader).

    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model wan --reps 10 --out $OUT/slg.json
    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model sdxl --reps 10 --out $OUT/pag.json
    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model wan --tiny --device cpu --reps 1   # smoke
    python bench/bench_guidance_pass.py --comfy /path/to/ComfyUI-0.29 --model sdxl --tiny --device cpu --reps 1  # smoke

Where PyAV (``av``) is not installed (the GPU machine), a stand-in ``av`` module is put in
sys.modules so that comfy_extras' nodes import (see stub_av_if_missing); the bench uses no video.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WAN = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
           text_dim=4096, out_dim=16, num_heads=12, num_layers=30, window_size=(-1, -1), qk_norm=True,
           cross_attn_norm=True, eps=1e-6)
WAN_TINY = {**WAN, "dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2}
# UNetModel arguments as comfy.model_detection reports them for an SDXL base checkpoint.
SDXL = dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, use_spatial_transformer=True,
            legacy=False, num_classes="sequential", adm_in_channels=2816, model_channels=320,
            num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
            transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
            use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
            use_temporal_attention=False, use_temporal_resblock=False)
SDXL_TINY = {**SDXL, "model_channels": 64, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
             "transformer_depth": [0, 1], "transformer_depth_middle": 1, "transformer_depth_output": [0, 0, 1, 1]}


def stub_av_if_missing() -> None:
    """comfy_extras' PAG/SLG nodes import comfy_api.latest, which imports PyAV (``av``) for video
    types at import time. The bench never touches video, and the GPU machine has no ``av`` (its
    wheel does not fit the carry), so where ``av`` is missing an empty stand-in module (any
    attribute or submodule is a placeholder class) is put in sys.modules; where it is installed,
    nothing changes."""
    import importlib.util
    import types

    if importlib.util.find_spec("av") is not None:
        return

    def module(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package, so that ``from av.x.y import Z`` resolves through sys.modules

        def getattr_(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            if attr[:1].isupper():  # a class name: a placeholder class
                cls = type(attr, (), {"__module__": name})
                setattr(mod, attr, cls)
                return cls
            sub = f"{name}.{attr}"
            if sub not in sys.modules:
                sys.modules[sub] = module(sub)
            return sys.modules[sub]
        mod.__getattr__ = getattr_
        return mod

    class _Finder:
        """Resolves any ``av.*`` submodule to a stand-in."""
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if fullname != "av" and not fullname.startswith("av."):
                return None
            return importlib.util.spec_from_loader(fullname, _Loader())

    class _Loader:
        def create_module(self, spec):
            return module(spec.name)

        def exec_module(self, mod):
            pass

    sys.meta_path.append(_Finder())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(args):
    """(ModelPatcher, latent shape, text context shape) with ComfyUI's classes and random weights."""
    sys.path.insert(0, args.comfy)
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.device == "cpu"
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")]
    if args.model == "wan":
        config = comfy.supported_models.WAN21_T2V({**(WAN_TINY if args.tiny else WAN), "image_model": "wan2.1"})
        config.set_inference_dtype(dtype, None)  # built in dtype as ComfyUI loads it (patch_embedding stays fp32)
        model = comfy.model_base.WAN21(config, device=args.device)
        frames, h, w = (2, 8, 8) if args.tiny else (9, 60, 104)
        latent, context = (1, 16, frames, h, w), (1, 512, 4096)
    else:
        config = comfy.supported_models.SDXL(SDXL_TINY if args.tiny else SDXL)
        config.set_inference_dtype(dtype, None)
        model = comfy.model_base.SDXL(config, device=args.device)
        side = 16 if args.tiny else 128
        latent, context = (1, 4, side, side), (1, 77, 2048)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.manual_cast_dtype = None
    device = torch.device(args.device)
    patcher = comfy.model_patcher.ModelPatcher(model, device, device)
    return patcher, latent, context, dtype


def timed_dispatcher(policy, device: str):
    """The pack's size-1 dispatcher, timing each branch's forward on its own (synchronised)."""
    from cfg_runtime.parallel.dispatch import BranchDispatcher

    class TimedDispatcher(BranchDispatcher):
        def __init__(self, policy) -> None:
            super().__init__(policy)
            self.branch_s: dict[str, list[float]] = {}

        def __call__(self, evaluate, x, step, **kw):
            def timed_evaluate(branch):
                _sync(device)
                t0 = time.perf_counter()
                out = evaluate(branch)
                _sync(device)
                self.branch_s.setdefault(branch.name, []).append(time.perf_counter() - t0)
                return out
            return super().__call__(timed_evaluate, x, step, **kw)

    return TimedDispatcher(policy)


def run_sampling(patcher, policy, conds, latent, args) -> dict:
    """The pack's size-1 sampling (euler, args.steps steps), best of args.reps after a warm-up:
    wall time per step, the dispatcher's per-evaluation forward and combine times and each
    branch's median forward time."""
    import comfy.samplers
    from cfg_runtime.adapters.sampling.branch_guider import BranchGuider

    guider = BranchGuider(patcher, policy)
    guider.set_conds(*conds[:len({b.cond for b in policy.branches})])
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", args.steps)
    noise = torch.randn(latent, generator=torch.Generator().manual_seed(0))
    best = None
    for rep in range(args.reps + 1):  # the first is a warm-up
        dispatcher = timed_dispatcher(policy, args.device)
        _sync(args.device)
        t0 = time.perf_counter()
        guider.sample_with(dispatcher, noise, torch.zeros(latent), sampler, sigmas, disable_pbar=True, seed=0)
        _sync(args.device)
        wall = (time.perf_counter() - t0) / args.steps
        st = dispatcher.stats
        row = {"step_s": wall, "forward_s": st.forward_s / st.evaluations, "combine_s": st.combine_s / st.evaluations,
               "branch_forward_s": {k: statistics.median(v) for k, v in dispatcher.branch_s.items()},
               "forwards_per_branch": dict(st.forwards)}
        if rep and (best is None or row["step_s"] < best["step_s"]):
            best = row
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--model", choices=("wan", "sdxl"), default="wan")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="", help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    patcher, latent, context, dtype = build(args)
    sys.path.insert(0, str(REPO))
    stub_av_if_missing()
    from comfy_extras import nodes_pag, nodes_slg
    from cfg_runtime.guidance.presets import standard_cfg

    if args.model == "wan":
        node = nodes_slg.SkipLayerGuidanceDiT.execute(patcher, 3.0, 0.0, 1.0, "1" if args.tiny else "9", "", 0.0)
    else:
        node = nodes_pag.PerturbedAttentionGuidance.execute(patcher, 3.0)
    patched = node[0] if isinstance(node, tuple) else node.result[0]
    g = torch.Generator().manual_seed(0)
    conds = []
    for _ in range(2):
        extra = {"pooled_output": torch.randn(1, 1280, generator=g).to(dtype)} if args.model == "sdxl" else {}
        conds.append([[torch.randn(context, generator=g).to(dtype), extra]])
    with torch.inference_mode():
        with_pass = run_sampling(patched, standard_cfg(5.0), conds, latent, args)  # cond, negative, the pass
        one = run_sampling(patcher, standard_cfg(1.0), conds, latent, args)  # one forward per step
    # 3 ranks, one branch each: the slowest branch's forward + the combine + the step's work
    # outside the forwards and the combine (sampler, cond preparation), as measured at size 1.
    overhead = with_pass["step_s"] - with_pass["forward_s"] - with_pass["combine_s"]
    slowest = max(with_pass["branch_forward_s"].values())
    predicted = slowest + with_pass["combine_s"] + overhead
    result = {"model": args.model, "node": "SkipLayerGuidanceDiT" if args.model == "wan" else "PAG",
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "dtype": str(dtype), "latent": latent, "size1": with_pass, "one_forward": one,
              "predicted_step_3_ranks_s": predicted, "predicted_speedup": with_pass["step_s"] / predicted,
              "step_overhead_s": overhead, "slowest_branch_forward_s": slowest,
              "note": "measured: size1 (cond, negative, pass on one GPU) and one_forward (cfg 1, one forward a "
                      "step); predicted (not measured): slowest branch forward + combine + step overhead, "
                      "without the all-gather of 3 latents (add it at the link's rate)",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
