"""The model-family layer: everything specific to one model family, behind :class:`ModelFamily`.

One module per family (``ltx2``, ``ltxv``, ``wan``, ``flux``, ``qwen_image``, ``minimax``) defines
``FAMILY``; :data:`FAMILIES` registers them and :func:`family_of` is the one detector (it
unwraps ModelPatcher -> BaseModel -> diffusion model -> a ``torch.compile`` wrapper). Generic
code reaches a family only through :func:`family_of`. Only this package imports ``comfy.ldm``
or looks at model classes (tests/test_architecture.py).
"""
from __future__ import annotations

from .base import MODALITY, STG, STG_AUDIO, ModelFamily, Split, diffusion_model
from . import flux, ltx2, ltxv, qwen_image, wan
from .ltx_options import model_family

OTHER = ModelFamily("other", "a model without a family module", matches=lambda dm: True)
FAMILIES: tuple[ModelFamily, ...] = (ltx2.FAMILY, ltxv.FAMILY, wan.FAMILY, flux.FAMILY, flux.CHROMA,
                                     qwen_image.FAMILY)

__all__ = ["FAMILIES", "MODALITY", "OTHER", "STG", "STG_AUDIO", "ModelFamily", "Split", "diffusion_model",
           "family_of", "model_family"]


def family_of(model) -> ModelFamily:
    """The family of a model (ModelPatcher, BaseModel or module); :data:`OTHER` when none matches."""
    dm = diffusion_model(model)
    return next((f for f in FAMILIES if f.matches(dm)), OTHER)
