"""What a policy and a model's options ask of each other, checked before any sampling starts."""
from __future__ import annotations

from ..errors import PolicyError
from ..guidance.policy import CFGPolicy
from .core_cfg import check_model_options  # noqa: F401  (one home: core_cfg.py)
from .ltx_options import check_blocks, model_family

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
