"""The one interface of a model family (what generic code may know about a model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ...parallel.sequence import SequenceGroup
from ..split.attention import SequenceStats

# Guidance passes beyond plain conditionings that a family can run (policy branches).
STG = "stg"                # perturbed self-attention in listed blocks (video / the only stream)
STG_AUDIO = "stg_audio"    # the same on an audio stream
MODALITY = "modality"      # modality-isolated pass (audio<->video cross-attention off)


class Split(Protocol):
    """A model's sequence split over one sequence group (lives on a rank; never pickled)."""

    stats: SequenceStats

    def apply(self, model_options: dict) -> dict:
        """A copy of ``model_options`` that splits every evaluation of the model."""


@dataclass(frozen=True)
class ModelFamily:
    """One model family: how to tell it (``matches`` on the unwrapped diffusion model), its
    sequence split (``make_split``: None = none), the share of an evaluation the split divides
    (the planner's figure), the passes it runs, and their per-call options."""

    name: str
    label: str
    matches: Callable[[Any], bool]
    make_split: Callable[[Any, SequenceGroup], Split] | None = None
    split_share: float = 0.0
    passes: frozenset[str] = frozenset()
    branch_options: Callable[[dict, Any], dict] | None = None
    blocks: Callable[[Any], int] | None = None  # transformer blocks (STG block ranges)

    @property
    def can_split(self) -> bool:
        return self.make_split is not None


def diffusion_model(model):
    """The diffusion model (nn.Module) of a ModelPatcher, a BaseModel or itself, compiled or not."""
    m = model
    inner = getattr(m, "model", None)          # ModelPatcher -> BaseModel
    if inner is not None and hasattr(inner, "diffusion_model"):
        m = inner
    dm = getattr(m, "diffusion_model", None)   # BaseModel -> diffusion model
    if dm is not None:
        m = dm
    return getattr(m, "_orig_mod", m)          # torch.compile wrapper
