"""The model-family layer: everything specific to one model family, behind :class:`ModelFamily`.

One module per family (``ltx2``, ``ltxv``, ``wan``, ``flux`` with Chroma, ``qwen_image``, ``minimax``) defines
``FAMILY``; :func:`families` registers them and :func:`family_of` is the one detector (it
unwraps ModelPatcher -> BaseModel -> diffusion model -> a ``torch.compile`` wrapper). Generic
code reaches a family only through :func:`family_of`. Only this package imports ``comfy.ldm``
or looks at model classes (tests/test_architecture.py).
"""
from __future__ import annotations

from functools import lru_cache

from .base import MODALITY, STG, STG_AUDIO, ModelFamily, Split, diffusion_model
from .ltx_options import model_family

OTHER = ModelFamily("other", "a model without a family module", matches=lambda dm: True)

__all__ = ["MODALITY", "OTHER", "STG", "STG_AUDIO", "ModelFamily", "Split", "diffusion_model", "families",
           "family_of", "model_family"]


@lru_cache(maxsize=None)
def families() -> tuple[ModelFamily, ...]:
    """The registered families, in detection order (imported on first use: the family modules
    import ComfyUI; ``ltx_options`` and ``ltx_stg`` must import without it)."""
    from . import flux, ltx2, ltxv, minimax, qwen_image, wan

    return ltx2.FAMILY, ltxv.FAMILY, wan.FAMILY, flux.FAMILY, flux.CHROMA, qwen_image.FAMILY, minimax.FAMILY


def family_of(model) -> ModelFamily:
    """The family of a model (ModelPatcher, BaseModel or module); :data:`OTHER` when none matches."""
    dm = diffusion_model(model)
    return next((f for f in families() if f.matches(dm)), OTHER)
