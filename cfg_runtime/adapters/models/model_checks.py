"""What a policy and a model's options ask of each other, checked before any sampling starts."""
from __future__ import annotations

from ...errors import ModelInputError, PolicyError
from ...guidance.policy import CFGPolicy
from ...guidance.blocks import block_indices
from ..families import MODALITY, STG, STG_AUDIO, diffusion_model, family_of
from .core_cfg import check_model_options  # noqa: F401  (one home: core_cfg.py)

def check_policy_fits_model(policy: CFGPolicy, model) -> None:
    """Refuse a policy whose branches this model's family cannot run, before any sampling starts."""
    family = family_of(model)
    if policy.rule.kind == "ltx_multimodal" and not family.passes:  # the only rule with STG/modality branches
        raise PolicyError(f"The ltx2_multimodal policy needs an LTX model; this model is {type(model.model).__name__}. "
                          f"Use the standard_cfg preset.")
    lists = [("video_stg_blocks", "perturb_blocks", STG), ("audio_stg_blocks", "perturb_audio_blocks", STG_AUDIO)]
    for branch in policy.branches:
        for label, field, needs in lists:
            blocks = getattr(branch, field)
            if blocks and (needs in family.passes or needs == STG):  # audio blocks of a video-only model: no-op
                _check_blocks(family, model, branch.name, label, blocks)
        if branch.isolate_modalities and MODALITY not in family.passes:
            raise PolicyError(f"Branch '{branch.name}' is the modality-isolated pass, which needs an LTX-2 audio+video "
                              f"model; this model is {family.label}. Set the modality scales to 1 for this model.")


def _check_blocks(family, model, branch: str, label: str, blocks) -> None:
    if STG not in family.passes:
        raise PolicyError(f"Branch '{branch}' ({label}): STG (the perturbed pass) needs an LTX model (LTX-Video or "
                          f"LTX-2); this model is {type(diffusion_model(model)).__name__}")
    try:
        block_indices(blocks, family.blocks(model))
    except ValueError as exc:
        raise PolicyError(f"Branch '{branch}' ({label}): {exc}") from None


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
