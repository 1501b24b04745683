"""The guidance functions other nodes put in the model options, run as core's sampler runs them.

RescaleCFG, CFGNorm, RenormCFG, PerpNeg and the video CFG nodes set ``sampler_cfg_function``;
APG, TCFG and FreSca ``sampler_pre_cfg_function``; PerturbedAttentionGuidance,
SkipLayerGuidanceDiT/SD3, SelfAttentionGuidance, CFGZeroStar, Mahiro, EpsilonScaling,
TemporalScoreRescaling ``sampler_post_cfg_function``; SkipLayerGuidanceDiTSimple
``sampler_calc_cond_batch_function``. They travel to the ranks by value (group/shipping.py)
and run on every rank after the branch exchange, in core's order (comfy.samplers
``sampling_function`` and ``cfg_function``, the same in 0.3.75, 0.29 and 0.33):
cond-batch function -> pre-CFG functions -> CFG function (or u + (c - u) s) -> post-CFG functions.
Every rank holds the same predictions, so every rank computes the same result: size N == size 1.
"""
from __future__ import annotations

import dis
import types
from typing import Any, Callable

import torch

import comfy.samplers

from ...errors import PolicyError
from ...guidance.policy import CFGBranch, CFGPolicy

CFG_KEYS = ("sampler_cfg_function", "sampler_pre_cfg_function")  # they need core's (cond, uncond, scale) CFG
BATCH_KEY = "sampler_calc_cond_batch_function"
DEFAULT_NODE = "the Multi-Branch Guider"


def node_of(fn: Any) -> str:
    """The node that made a function (its class: 'RescaleCFG' from RescaleCFG.patch.<locals>.rescale_cfg)."""
    qualname = getattr(fn, "__qualname__", "") or type(fn).__qualname__
    head = qualname.split(".<locals>")[0].split(".")[0]
    return head or getattr(fn, "__name__", type(fn).__name__)


def _functions(model_options: dict, key: str) -> list:
    value = model_options.get(key)
    if not value:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def guidance_nodes(model_options: dict, keys=CFG_KEYS + (BATCH_KEY, "sampler_post_cfg_function")) -> list[str]:
    """'Node (key)' for every guidance function in the options."""
    return [f"{node_of(fn)} ({key})" for key in keys for fn in _functions(model_options, key)]


def is_core_cfg(policy: CFGPolicy | None) -> bool:
    """A policy that is core's CFG: plain cond (and negative) branches, u + s (c - u), nothing else."""
    if policy is None:
        return True
    rule = policy.rule
    return (rule.kind == "standard" and not rule.rescale and not rule.cfg_zero_star
            and all(b.is_plain and (b.name, b.cond) in (("cond", "positive"), ("negative", "negative"))
                    for b in policy.branches))


def _functions_in(obj, depth: int = 0):
    """Every Python function in the model options (lists, dicts, tuples; transformer patches included)."""
    if depth > 6:
        return
    if isinstance(obj, types.FunctionType):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _functions_in(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _functions_in(value, depth + 1)


def _writes(fn: types.FunctionType, name: str) -> bool:
    return any(i.opname == "STORE_DEREF" and i.argval == name for i in dis.get_instructions(fn))


def shared_state(model_options: dict) -> str | None:
    """The node whose closures share a variable that one of them assigns (SelfAttentionGuidance records
    the negative pass's attention for its post-CFG function): on a rank each closure has its own copy
    (cloudpickle), so the record would not reach the other function. None: no such closures."""
    holders: dict[int, list] = {}
    for fn in {id(f): f for f in _functions_in(model_options)}.values():
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            holders.setdefault(id(cell), []).append((fn, name))
    for pairs in holders.values():
        if len(pairs) > 1 and any(_writes(fn, name) for fn, name in pairs):
            return node_of(pairs[0][0])
    return None


def check_model_options(model_options: dict, policy: CFGPolicy | None = None, node: str = DEFAULT_NODE,
                        world_size: int = 1) -> None:
    """Refuse guidance functions that truly conflict with the policy (a second CFG rule), before sampling."""
    replacing = guidance_nodes(model_options, CFG_KEYS + (BATCH_KEY,))
    if replacing and not is_core_cfg(policy):
        raise PolicyError(
            f"The model carries {', '.join(replacing)}, which replaces core's CFG of cond and negative, and "
            f"{node} runs the '{policy.name}' policy ({policy.rule.kind} rule), a different guidance formula: the "
            f"two rules cannot both apply. Remove that node from the model, or use standard CFG (no policy input, "
            f"or the standard_cfg preset without rescale and CFG-Zero*).")
    shared = shared_state(model_options) if world_size > 1 else None
    if shared:
        raise PolicyError(
            f"{shared} keeps state that one of its functions writes and another reads (SelfAttentionGuidance records "
            f"the attention of the negative pass for its own extra pass), so both must run in one process, which "
            f"parallel size {world_size} of {node} does not do. Run at parallel size 1, or use "
            f"PerturbedAttentionGuidance, whose pass runs on a GPU of its own.")


def branch_call(model_options: dict, branch: CFGBranch) -> tuple[Callable, int] | None:
    """The cond-batch function (SkipLayerGuidanceDiTSimple) and the slot of this branch, or None."""
    fn = model_options.get(BATCH_KEY)
    if fn is None or not branch.is_plain or branch.cond not in ("positive", "negative"):
        return None
    return fn, 0 if branch.cond == "positive" else 1


def evaluate_with(fn: Callable, slot: int, model, conds: dict, x, timestep, model_options: dict) -> torch.Tensor:
    """One branch through the cond-batch function: core's [cond, uncond] with only this branch's entry."""
    pair = [conds.get("positive"), None] if slot == 0 else [None, conds.get("negative")]
    return fn({"conds": pair, "input": x, "sigma": timestep, "model": model, "model_options": model_options})[slot]


def core_combine(model, conds: dict, preds: tuple[torch.Tensor, torch.Tensor], uncond_evaluated: bool,
                 scale: float, x, timestep, model_options: dict) -> torch.Tensor:
    """Core's pre-CFG functions and cfg_function (CFG function, post-CFG functions) on the exchanged predictions."""
    cond, uncond = conds.get("positive"), conds.get("negative") if uncond_evaluated else None
    out = list(preds)
    for fn in _functions(model_options, "sampler_pre_cfg_function"):
        out = fn({"conds": [cond, uncond], "conds_out": out, "cond_scale": scale, "timestep": timestep,
                  "input": x, "sigma": timestep, "model": model, "model_options": model_options})
    return comfy.samplers.cfg_function(model, out[0], out[1], scale, x, timestep, model_options=model_options,
                                       cond=cond, uncond=uncond)


def needs_core_combine(model_options: dict) -> bool:
    return any(_functions(model_options, key) for key in CFG_KEYS)
