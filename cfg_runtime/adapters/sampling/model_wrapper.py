"""The CFG Parallel model node's hook into ComfyUI: an OUTER_SAMPLE sampling wrapper.

ComfyUI 0.3.75 and 0.29 call every sampling of a model through ``CFGGuider.sample``: it
packs nested latents, (0.29) prepares the denoise mask, merges the model patcher's
wrappers into the sampling options, and then runs ``outer_sample`` through the
``WrappersMP.OUTER_SAMPLE`` wrappers of ``comfy.patcher_extension``. KSampler,
KSamplerAdvanced (``comfy.sample.sample`` -> ``comfy.samplers.sample``), SamplerCustom and
SamplerCustomAdvanced all arrive there, with the guider as the executor's ``class_obj``.

The wrapper, registered on a clone of the model under ``WRAPPER_KEY``, runs before
``outer_sample`` loads the model. It reads the guider's guidance (its class, cfg and
conditionings) into a CFG policy, or refuses it with a message, and hands the sampling to
the pack's Multi-Branch Guider with the same inputs: on the worker group at parallel
size >= 2, in this process branch by branch at size 1. The inputs are what ``sample()``
already prepared (packed latents and, on 0.29, the mask prepared for them): the latents go
back to their nested form, and the mask travels as a second OUTER_SAMPLE wrapper in the
model options (``MASK_KEY``) that gives ``outer_sample`` that very mask, in this process
and on every rank, so that nothing is prepared twice.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

import comfy.patcher_extension as pe
import comfy.samplers
import comfy.utils

from ...errors import PolicyError
from ...guidance.policy import CFGBranch, CFGPolicy, WeightedBranches
from ...guidance.presets import standard_cfg
from .branch_guider import BranchGuider
from .wrapper_keys import MASK_KEY, OUTER, WRAPPER_KEY
from .guider import MultiBranchGuider, ParallelSettings

log = logging.getLogger("cfg_parallel")



def _core_predict(guider: Any) -> bool:
    """True when the guider's prediction is core's CFG (it does not override predict_noise)."""
    return type(guider).predict_noise is comfy.samplers.CFGGuider.predict_noise


def _is_dual_cfg(guider: Any) -> bool:
    """Core's DualCFGGuider (a class of comfy_extras/nodes_custom_sampler.py, loaded by path)."""
    cls = type(guider)
    return cls.__name__ == "Guider_DualCFG" and cls.__module__.endswith("nodes_custom_sampler") \
        and all(hasattr(guider, a) for a in ("cfg1", "cfg2", "nested"))


def dual_cfg_policy(cfg1: float, cfg2: float, nested: bool) -> CFGPolicy:
    """DualCFGGuider's formula as weighted branches: pred = c + w_m (c - middle) + w_n (c - negative).

    regular: pred = n + cfg2 (m - n) + cfg1 (c - m)    ->  w_m = cfg1 - cfg2,       w_n = cfg2 - 1
    nested:  pred = n + cfg2 (m + cfg1 (c - m) - n)   ->  w_m = cfg2 (cfg1 - 1),   w_n = cfg2 - 1
    A branch whose weight is 0 is not evaluated (core's own cfg-1 shortcut drops the same ones
    or computes a term that is multiplied by 0)."""
    w_m = cfg2 * (cfg1 - 1.0) if nested else cfg1 - cfg2
    terms = [("middle", "middle", w_m), ("negative", "negative", cfg2 - 1.0)]
    branches = [CFGBranch("cond", "positive")] + [CFGBranch(n, c) for n, c, w in terms if w != 0.0]
    weights = tuple((n, float(w)) for n, _, w in terms if w != 0.0)
    return CFGPolicy("dual_cfg_nested" if nested else "dual_cfg", tuple(branches), WeightedBranches(weights))


def guider_policy(guider: Any, connected: CFGPolicy | None) -> CFGPolicy:
    """The policy that computes what ``guider`` computes (or the connected one); refuses the rest."""
    name = type(guider).__name__
    if isinstance(guider, BranchGuider):
        return guider.policy
    if _is_dual_cfg(guider):
        if connected is not None:
            return connected
        if guider.model_options.get("sampler_post_cfg_function"):
            raise PolicyError("DualCFGGuider applies post-CFG functions (set by a node such as a guidance patch) "
                              "to its inner CFG term, which the CFG Parallel node cannot split into branches. "
                              "Remove that node, or remove CFG Parallel from this model.")
        return dual_cfg_policy(float(guider.cfg1), float(guider.cfg2), bool(guider.nested))
    if not _core_predict(guider):
        raise PolicyError(
            f"The CFG Parallel node cannot run the guider {name} (from {type(guider).__module__}): it computes its "
            f"prediction with its own formula, which the pack cannot map onto guidance branches. Use KSampler, "
            f"KSamplerAdvanced, CFGGuider, BasicGuider or DualCFGGuider with this model, or remove the CFG Parallel "
            f"node.")
    if connected is not None:
        return connected
    cfg = float(getattr(guider, "cfg", 1.0))
    if not math.isfinite(cfg):
        raise PolicyError(f"The sampler's cfg must be a finite number, got {cfg}.")
    if cfg != 1.0 and guider.original_conds.get("negative") is None:
        raise PolicyError(f"{name} has cfg {cfg:g} but no negative conditioning: connect one, or set cfg to 1.")
    return standard_cfg(cfg)


def check_conds(policy: CFGPolicy, conds: dict, guider_name: str) -> None:
    missing = sorted({b.cond for b in policy.branches} - {k for k, v in conds.items() if v is not None})
    if missing:
        raise PolicyError(f"The CFG policy has a branch on the '{missing[0]}' conditioning, which {guider_name} "
                          f"does not provide (it has: {', '.join(sorted(conds)) or 'none'}). Connect a policy "
                          f"whose branches use {', '.join(sorted(conds))}, or use another sampler node.")


def foreign_wrappers(model_patcher) -> list[str]:
    """Sampling wrappers of other nodes on this model: they would run here but not on the ranks."""
    keys = []
    for kind, by_key in getattr(model_patcher, "wrappers", {}).items():
        keys += [f"{kind}:{key}" for key, fns in by_key.items() if fns and key not in (WRAPPER_KEY, MASK_KEY)]
    return keys


@dataclass(frozen=True)
class UseMask:
    """OUTER_SAMPLE wrapper: hands outer_sample the denoise mask that the first sample() prepared."""

    mask: torch.Tensor | None

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                 disable_pbar=False, seed=None, **kwargs):
        mask = self.mask
        if mask is not None:
            mask = mask.to(executor.class_obj.model_patcher.load_device)
        return executor(noise, latent_image, sampler, sigmas, mask, callback, disable_pbar, seed, **kwargs)


def patcher_for_branches(model_patcher, denoise_mask: torch.Tensor | None):
    """A clone of the model without the CFG Parallel wrapper, its options carrying the prepared mask."""
    clone = model_patcher.clone()
    clone.remove_wrappers_with_key(OUTER, WRAPPER_KEY)
    mask = None if denoise_mask is None else denoise_mask.detach().to("cpu")
    pe.add_wrapper_with_key(OUTER, MASK_KEY, UseMask(mask), clone.model_options, is_model_options=True)
    return clone


def unpacked(t: torch.Tensor, latent_shapes) -> Any:
    """The latent as sample() received it: nested again when it was packed from several parts."""
    if latent_shapes is None or len(latent_shapes) <= 1:
        return t
    import comfy.nested_tensor

    return comfy.nested_tensor.NestedTensor(comfy.utils.unpack_latents(t, latent_shapes))


def packed(out: Any) -> torch.Tensor:
    """What outer_sample returns for that latent (sample() unpacks it again)."""
    if getattr(out, "is_nested", False):
        return comfy.utils.pack_latents(out.unbind())[0]
    return out


def packed_callback(callback):
    """The outer_sample callback, fed from the inner sample(): outer_sample's callback takes the
    packed latent (0.33's sample() wraps it to unpack), while the inner sample() of 0.33 hands
    its callback the nested view: pack it again (a no-op where it is packed already)."""
    if callback is None:
        return None

    def inner(step, x0, x, total_steps):
        return callback(step, packed(x0), packed(x), total_steps)

    return inner


@dataclass(frozen=True)
class GroupSampleWrapper:
    """OUTER_SAMPLE wrapper of the CFG Parallel node: the model's samplings run as a policy's branches."""

    settings: ParallelSettings
    policy: CFGPolicy | None = None

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                 disable_pbar=False, seed=None, latent_shapes=None, **kwargs):
        core = executor.class_obj
        if isinstance(core, BranchGuider):  # the pack's own guider: its settings rule
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                            latent_shapes=latent_shapes, **kwargs)
        policy = guider_policy(core, self.policy)
        conds = dict(core.original_conds)
        check_conds(policy, conds, type(core).__name__)
        foreign = foreign_wrappers(core.model_patcher)
        if foreign:
            raise PolicyError(f"The model carries sampling wrappers of other nodes ({', '.join(foreign)}); they "
                              f"would run in ComfyUI but not on the worker processes. Remove those nodes, or "
                              f"remove the CFG Parallel node.")
        guider = MultiBranchGuider(patcher_for_branches(core.model_patcher, denoise_mask), policy, self.settings)
        guider.original_conds = conds
        log.info("cfg-parallel: %s (%s) -> %d branch(es) on %d rank(s)", type(core).__name__, policy.name,
                 len(policy.branches), self.settings.world_size)
        out = guider.sample(unpacked(noise, latent_shapes), unpacked(latent_image, latent_shapes), sampler, sigmas,
                            None, packed_callback(callback), disable_pbar, seed)
        return packed(out)


def with_group_sampling(model_patcher, settings: ParallelSettings, policy: CFGPolicy | None = None):
    """A clone of the model whose every sampling runs through GroupSampleWrapper (replaces an earlier one)."""
    clone = model_patcher.clone()
    clone.remove_wrappers_with_key(OUTER, WRAPPER_KEY)
    clone.add_wrapper_with_key(OUTER, WRAPPER_KEY, GroupSampleWrapper(settings, policy))
    return clone
