"""LTX-2 multimodal guidance, per modality, in plain torch.

Behaviour follows ltx-core's ``MultiModalGuider`` (``ltx_core/components/guiders.py``)
and the denoise loop of ltx-pipelines (``ltx_pipelines/utils/denoisers.py``):

* combine (on x0 / "denoised" predictions, in float32, cast back to ``cond``'s dtype)::

      pred = c + (cfg - 1)(c - negative) + stg (c - perturbed) + (modality - 1)(c - isolated)
      if rescale != 0:
          pred *= rescale * std(c) / std(pred) + (1 - rescale)

  ``std`` is over *every* element of the modality's tensor (batch included),
  with Bessel's correction (``torch.Tensor.std()`` with no arguments).
* ``skip_step = N > 0``: only steps whose 0-based index is a multiple of ``N + 1``
  are guided; on the others the modality's previous guided result is reused
  unchanged, none of its passes is needed (not even cond), and where the other
  modality is guided its stream is switched off in that step's forwards (ltx-pipelines
  runs it with ``enabled=False``; policy.LTXMultimodal.streams).
* the perturbed (STG) pass replaces the self-attention of the ``stg_blocks``
  (0-based ``transformer_blocks`` indices) by its value projection, video
  self-attention with the video blocks and audio self-attention with the audio
  blocks, in the same forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .blocks import block_indices

__all__ = [
    "BRANCHES",
    "ModalityGuidance",
    "guide_modality",
    "branch_weights",
    "needed_branches",
    "skips_step",
]

# Names of the passes, in the order of the formula's terms.
BRANCHES = ("cond", "negative", "perturbed", "isolated")


@dataclass(frozen=True)
class ModalityGuidance:
    """Guidance parameters of one modality (video or audio) of LTX-2.

    The neutral defaults (cfg 1, stg 0, modality 1, rescale 0, skip_step 0) mean
    "cond only", as in ltx-core's ``MultiModalGuiderParams``.
    """

    cfg: float = 1.0
    stg: float = 0.0
    stg_blocks: tuple[int, ...] = ()
    modality: float = 1.0
    rescale: float = 0.0
    skip_step: int = 0

    # Official defaults, assigned below the class.
    LTX2_VIDEO: ClassVar["ModalityGuidance"]
    LTX2_AUDIO: ClassVar["ModalityGuidance"]
    LTX23_VIDEO: ClassVar["ModalityGuidance"]
    LTX23_AUDIO: ClassVar["ModalityGuidance"]
    LTX23_HQ_VIDEO: ClassVar["ModalityGuidance"]
    LTX23_HQ_AUDIO: ClassVar["ModalityGuidance"]

    def __post_init__(self) -> None:
        # Accept any iterable of block indices (JSON gives lists); keep the dataclass hashable.
        if not isinstance(self.stg_blocks, tuple):
            object.__setattr__(self, "stg_blocks", tuple(self.stg_blocks))

    # ltx-core decides which passes to run with math.isclose (MultiModalGuider.do_*_generation).
    @property
    def needs_negative(self) -> bool:
        """The negative-prompt pass is needed (cfg differs from 1)."""
        return not math.isclose(self.cfg, 1.0)

    @property
    def needs_perturbed(self) -> bool:
        """The perturbed (STG) pass is needed (stg differs from 0)."""
        return not math.isclose(self.stg, 0.0)

    @property
    def needs_isolated(self) -> bool:
        """The modality-isolated pass (no audio<->video cross-attention) is needed (modality differs from 1)."""
        return not math.isclose(self.modality, 1.0)

    def validate(self, num_blocks: Optional[int] = None) -> None:
        """Raise ValueError saying what is wrong and what to do.

        ``num_blocks``: the model's transformer block count, to check ``stg_blocks``
        against (48 for LTX-2 / LTX-2.3); ``None`` skips that check.
        """
        for name in ("cfg", "stg", "modality", "rescale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(
                f"rescale must be in [0, 1] (0 = off, 1 = full std matching), got {self.rescale}; "
                "the official LTX-2 value is 0.7."
            )
        if isinstance(self.skip_step, bool) or not isinstance(self.skip_step, int):
            raise ValueError(f"skip_step must be a whole number, got {self.skip_step!r}.")
        if self.skip_step < 0:
            raise ValueError(
                f"skip_step must be >= 0, got {self.skip_step}: 0 guides every step, "
                "N guides one step in N + 1 and reuses that result on the N steps after it."
            )
        block_indices(self.stg_blocks, num_blocks, unique=True)
        if self.needs_perturbed and not self.stg_blocks:
            raise ValueError(
                f"stg is {self.stg} but stg_blocks is empty, so the perturbed pass would equal cond "
                "and cost a forward for nothing: set stg_blocks (LTX-2: 29, LTX-2.3: 28) or set stg to 0."
            )

    @classmethod
    def official(cls, version: str = "2.0") -> tuple["ModalityGuidance", "ModalityGuidance"]:
        """(video, audio) official defaults for LTX-2 ``"2.0"`` or ``"2.3"`` (ltx-pipelines constants)."""
        table = {
            "2.0": (cls.LTX2_VIDEO, cls.LTX2_AUDIO),
            "2.3": (cls.LTX23_VIDEO, cls.LTX23_AUDIO),
            "2.3-hq": (cls.LTX23_HQ_VIDEO, cls.LTX23_HQ_AUDIO),
        }
        try:
            return table[version]
        except KeyError:
            raise ValueError(f"Unknown LTX version {version!r}; expected one of {sorted(table)}.") from None


# ltx_pipelines/utils/constants.py: LTX_2_PARAMS (40 steps), LTX_2_3_PARAMS (30 steps,
# STG block 28), LTX_2_3_HQ_PARAMS (res2s sampler, 15 steps, no STG).
ModalityGuidance.LTX2_VIDEO = ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(29,), modality=3.0, rescale=0.7, skip_step=0)
ModalityGuidance.LTX2_AUDIO = ModalityGuidance(cfg=7.0, stg=1.0, stg_blocks=(29,), modality=3.0, rescale=0.7, skip_step=0)
ModalityGuidance.LTX23_VIDEO = ModalityGuidance(cfg=3.0, stg=1.0, stg_blocks=(28,), modality=3.0, rescale=0.7, skip_step=0)
ModalityGuidance.LTX23_AUDIO = ModalityGuidance(cfg=7.0, stg=1.0, stg_blocks=(28,), modality=3.0, rescale=0.7, skip_step=0)
ModalityGuidance.LTX23_HQ_VIDEO = ModalityGuidance(cfg=3.0, stg=0.0, stg_blocks=(), modality=3.0, rescale=0.45, skip_step=0)
ModalityGuidance.LTX23_HQ_AUDIO = ModalityGuidance(cfg=7.0, stg=0.0, stg_blocks=(), modality=3.0, rescale=1.0, skip_step=0)


def skips_step(params: ModalityGuidance, step: int) -> bool:
    """True when ``step`` (0-based index into the stage's schedule) reuses the previous guided result.

    With ``skip_step = N > 0`` the guided steps are 0, N+1, 2(N+1), ...; step 0 is never skipped.
    """
    if step < 0:
        raise ValueError(f"step must be a 0-based step index, got {step}.")
    return params.skip_step != 0 and step % (params.skip_step + 1) != 0


def branch_weights(params: ModalityGuidance) -> dict[str, float]:
    """The weight of each non-cond pass in the formula (0 = the term adds nothing)."""
    return {"negative": params.cfg - 1.0, "perturbed": params.stg, "isolated": params.modality - 1.0}


def needed_branches(params: ModalityGuidance, step: int) -> tuple[str, ...]:
    """Passes this modality needs at ``step`` (names from BRANCHES); empty on a skipped step."""
    if skips_step(params, step):
        return ()
    flags = (True, params.needs_negative, params.needs_perturbed, params.needs_isolated)
    return tuple(name for name, needed in zip(BRANCHES, flags) if needed)


def guide_modality(
    params: ModalityGuidance,
    cond: torch.Tensor,
    negative: Optional[torch.Tensor] = None,
    perturbed: Optional[torch.Tensor] = None,
    isolated: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Guided x0 prediction of one modality from its pass predictions (ltx-core's formula).

    Computed in float32 and cast back to ``cond.dtype``. A pass the params need
    must be given (ValueError otherwise); a pass given is used with its weight even
    where the params do not need it (another modality ran it; ltx-pipelines does the
    same); a pass not given counts as 0.0, as in ltx-pipelines.
    The operation order is ltx-core's, so float32 results match it bit for bit.
    When no term and no rescale applies the result may be ``cond`` itself (no copy).
    """
    terms = (
        ("negative", negative, params.needs_negative, params.cfg - 1.0),
        ("perturbed", perturbed, params.needs_perturbed, params.stg),
        ("isolated", isolated, params.needs_isolated, params.modality - 1.0),
    )
    c = cond.float()
    pred = c
    for name, branch, needed, weight in terms:
        if branch is None:
            if needed:
                raise ValueError(
                    f"guide_modality: the '{name}' prediction is None but the guidance needs it "
                    f"(cfg={params.cfg}, stg={params.stg}, modality={params.modality}); run that pass "
                    "or set its scale to neutral (cfg 1, stg 0, modality 1)."
                )
            if weight != 0.0:
                # a scale within math.isclose of neutral runs no pass, but ltx-pipelines still adds
                # weight * (c - 0.0) for it (it passes 0.0 for a pass it did not run): same bits
                pred = pred + weight * c
            continue
        if branch.shape != cond.shape:
            raise ValueError(
                f"guide_modality: the '{name}' prediction has shape {tuple(branch.shape)} but cond has "
                f"{tuple(cond.shape)}; pass per-modality (unpacked) predictions of the same latent."
            )
        if weight != 0.0:  # a zero term adds exactly 0 in ltx-core: skipping it changes no bit
            pred = pred + weight * (c - branch.float())
    if params.rescale != 0:
        pred = rescale_to_cond(pred, c, params.rescale)
    return pred.to(cond.dtype)


def rescale_to_cond(pred: torch.Tensor, cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (fp32): pull pred's std toward cond's by `rescale` (0 off, 1 full match)."""
    factor = cond.std() / pred.std()
    return pred * (rescale * factor + (1 - rescale))
