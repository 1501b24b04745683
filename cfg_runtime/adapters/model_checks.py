"""What a policy and a model's options ask of each other, checked before any sampling starts."""
from __future__ import annotations

from ..errors import ModelInputError, PolicyError, ShippingError
from ..guidance.policy import CFGPolicy
from .ltx_options import check_blocks, model_family

# Model options that replace or reorder the guidance combine: they cannot coexist with a policy.
CONFLICTING_OPTIONS = {
    "sampler_cfg_function": "a custom CFG function (set by a node such as RescaleCFG or a guidance patch)",
    "sampler_pre_cfg_function": "a pre-CFG function (set by a node such as PerpNeg or a guidance patch)",
    "sampler_calc_cond_batch_function": "a custom cond-batch function",
}


def check_model_options(model_options: dict) -> None:
    """Refuse options that would silently change the combine."""
    for key, what in CONFLICTING_OPTIONS.items():
        if model_options.get(key):
            raise ShippingError(
                f"The model carries {what} ('{key}'). The Multi-Branch Guider combines the branches with its "
                f"policy, so that node's effect would be lost: remove it from the graph, or use the matching "
                f"option of the CFGPolicy Builder (guidance rescale, CFG-Zero*).")


def check_policy_fits_model(policy: CFGPolicy, model) -> None:
    """Refuse a policy whose branches this model cannot run, before any sampling starts."""
    family = model_family(model)
    if policy.rule.kind == "ltx_multimodal" and family == "other":  # the only rule with STG/modality branches
        raise PolicyError(f"The ltx2_multimodal policy needs an LTX model; this model is {type(model.model).__name__}. "
                          f"Use the standard_cfg preset.")
    lists = [("video_stg_blocks", "perturb_blocks")]
    if family == "ltxav":  # an LTX-Video model has no audio stream: its audio blocks perturb nothing
        lists.append(("audio_stg_blocks", "perturb_audio_blocks"))
    for branch in policy.branches:
        for label, field in lists:
            blocks = getattr(branch, field)
            if blocks:
                try:
                    check_blocks(model, blocks)
                except ValueError as exc:
                    raise PolicyError(f"Branch '{branch.name}' ({label}): {exc}") from None
        if branch.isolate_modalities and family != "ltxav":
            raise PolicyError(f"Branch '{branch.name}' is the modality-isolated pass, which needs an LTX-2 audio+video "
                              f"model; this model is {family!r}. Set the modality scales to 1 for this model.")


_SHAPE_WORDS = ("shapes cannot be multiplied", "must match the size of tensor", "size mismatch", "but got input of size")


def input_mismatch(error_type: str, message: str, conds: dict) -> ModelInputError | None:
    """The one message for a model that could not take its inputs (a shape error inside the model), at any
    parallel size; None when the error is something else. conds: the guider's conditionings by name."""
    if error_type != "RuntimeError" or not any(w in message for w in _SHAPE_WORDS):
        return None
    widths = []
    for name, entries in sorted(conds.items()):
        found = sorted({int(c["cross_attn"].shape[-1]) for c in entries or () if hasattr(c.get("cross_attn"), "shape")})
        if found:
            widths.append(f"{name} {'/'.join(map(str, found))}")
    # (worded without core's own phrase, to which ComfyUI 0.29 appends a tip about CLIP loaders)
    detail = message.strip()[:160].replace("mat1 and mat2 shapes cannot be multiplied", "matrix shapes do not fit")
    have = f" The conditioning has {', '.join(widths)} values per token." if widths else ""
    return ModelInputError(
        f"The model could not take this sampling's inputs ({detail}).{have} Connect conditioning "
        f"from the text encoder that belongs to this model, and a latent made for it, then queue the prompt again.")
