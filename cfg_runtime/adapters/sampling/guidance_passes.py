"""The extra forward pass of a guidance node as a branch of its own, on its own rank.

PerturbedAttentionGuidance and SkipLayerGuidanceDiT (and SkipLayerGuidanceSD3, which builds
the same function) run one more model call inside their post-CFG function; PerpNeg inside
its CFG function (the empty prompt). Core runs that call after cond and negative; here it is
a branch: on the rank the plan gives it, the node's own function runs with placeholder
predictions and its one call to ``comfy.samplers.calc_cond_batch`` is made and recorded
(the pass: the same model, conditioning, x, sigma and options as core's); the recording is
exchanged with the other branches; then every rank runs the node's function for real, its
call answered with the exchanged prediction. The node's own arithmetic combines, in its own
order: size N == size 1 bit for bit, and the pass's forward is core's forward.

Whether a node makes its call depends on sigma and its widgets (SLG's start/end percent, a
scale of 0), never on the predictions, so the recording and the real run agree. The swap of
``comfy.samplers.calc_cond_batch`` lasts for one call of the node's function, on the thread
that samples.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch

import comfy.samplers

from ...errors import PredictionError
from ...guidance.policy import CFGBranch
from ..models.core_cfg import node_of

PASS_NODES = {"PerturbedAttentionGuidance": "pag", "SkipLayerGuidanceDiT": "slg", "PerpNeg": "perpneg"}
KEYS = ("sampler_cfg_function", "sampler_post_cfg_function")


@dataclass(frozen=True)
class ExtraPass:
    """A guidance function whose model call runs as the branch ``name``."""

    name: str
    key: str
    index: int  # position in the post-CFG list (0 for the CFG function)
    fn: Callable


def extra_passes(model_options: dict) -> tuple[ExtraPass, ...]:
    passes: list[ExtraPass] = []
    for key in KEYS:
        value = model_options.get(key)
        fns = value if isinstance(value, list) else [value] if value else []
        for i, fn in enumerate(fns):
            short = PASS_NODES.get(node_of(fn))
            if short is not None:
                count = sum(p.name.startswith(short) for p in passes)
                passes.append(ExtraPass(short if count == 0 else f"{short}{count + 1}", key, i, fn))
    return tuple(passes)


def pass_branches(passes: tuple[ExtraPass, ...]) -> tuple[CFGBranch, ...]:
    return tuple(CFGBranch(p.name, "positive") for p in passes)


@contextmanager
def _calc_cond_batch(replacement: Callable):
    original = comfy.samplers.calc_cond_batch
    comfy.samplers.calc_cond_batch = replacement
    try:
        yield original
    finally:
        comfy.samplers.calc_cond_batch = original


def _args(p: ExtraPass, model, conds: dict, scale: float, x, timestep, model_options: dict) -> dict:
    """What core hands the function, with x in place of every prediction (the recording does not read them)."""
    cond, uncond = conds.get("positive"), conds.get("negative")
    common = {"cond_scale": scale, "model": model, "sigma": timestep, "model_options": model_options, "input": x,
              "cond_denoised": x, "uncond_denoised": x}
    if p.key == "sampler_post_cfg_function":
        return {**common, "denoised": x, "cond": cond, "uncond": uncond}
    zero = torch.zeros_like(x)
    return {**common, "cond": zero, "uncond": zero, "timestep": timestep, "input_cond": cond, "input_uncond": uncond}


def record(p: ExtraPass, model, conds: dict, scale: float, x, timestep, model_options: dict) -> torch.Tensor:
    """Run the node's function once and return its model call's prediction (zeros when it makes none)."""
    made: list[torch.Tensor] = []

    def recording(*a, **kw):
        out = original(*a, **kw)
        made.append(out[0])
        return out

    with _calc_cond_batch(recording) as original:
        p.fn(_args(p, model, conds, scale, x, timestep, model_options))
    if len(made) > 1:
        raise PredictionError(f"{node_of(p.fn)} made {len(made)} model calls in one step; the pack runs one as the "
                              f"'{p.name}' branch. Run at parallel size 1, or report this node.")
    return made[0] if made else torch.zeros_like(x)


@dataclass(frozen=True)
class Replayed:
    """The node's function with its model call answered by the exchanged prediction."""

    fn: Callable
    pred: torch.Tensor

    def __call__(self, args: dict) -> Any:
        def answer(model, conds, *a, **kw):
            if len(conds) != 1:
                return original(model, conds, *a, **kw)
            return [self.pred]

        with _calc_cond_batch(answer) as original:
            return self.fn(args)


def replayed_options(model_options: dict, passes: tuple[ExtraPass, ...], preds: dict) -> dict:
    """The model options with each pass's function answered from `preds` (a copy; unchanged without passes)."""
    if not passes or not all(p.name in preds for p in passes):
        return model_options
    options = dict(model_options)
    post = list(options.get("sampler_post_cfg_function", []))
    for p in passes:
        if p.key == "sampler_post_cfg_function":
            post[p.index] = Replayed(p.fn, preds[p.name])
        else:
            options[p.key] = Replayed(p.fn, preds[p.name])
    if post:
        options["sampler_post_cfg_function"] = post
    return options
