"""What a policy and a model's options ask of each other, checked before any sampling starts."""
from __future__ import annotations

from ...errors import PolicyError
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
