"""Ready-made policies: standard CFG, LTX-2 multimodal guidance, custom weighted branches."""
from __future__ import annotations

from typing import Iterable

from ..errors import PolicyError, clip
from .ltx import ModalityGuidance
from .policy import CFGBranch, CFGPolicy, LTXMultimodal, StandardCFG, WeightedBranches

# Relative cost of one forward, for the cost-balanced plan (measured on one H100 at
# LTX-2 stage-1 size: the modality-isolated pass skips the cross-modal attention).
ISOLATED_PASS_COST = 0.86

PRESET_NAMES = ("standard_cfg", "ltx2_multimodal", "custom")


def standard_cfg(scale: float, rescale: float = 0.0, cfg_zero_star: bool = False, zero_init_steps: int = 0) -> CFGPolicy:
    """Two-branch CFG (one branch when scale is 1: the negative would be a no-op)."""
    branches = [CFGBranch("cond", "positive")]
    if scale != 1.0:
        branches.append(CFGBranch("negative", "negative"))
    rule = StandardCFG(scale=float(scale), rescale=float(rescale), cfg_zero_star=bool(cfg_zero_star),
                       zero_init_steps=int(zero_init_steps))
    return CFGPolicy("standard_cfg", tuple(branches), rule)


def ltx2_multimodal(video: ModalityGuidance, audio: ModalityGuidance) -> CFGPolicy:
    """LTX-2 guidance: cond, plus negative / perturbed (STG) / modality-isolated passes where a scale needs them."""
    branches = [CFGBranch("cond", "positive")]
    if video.needs_negative or audio.needs_negative:
        branches.append(CFGBranch("negative", "negative"))
    if video.needs_perturbed or audio.needs_perturbed:
        branches.append(CFGBranch(
            "perturbed", "positive",
            perturb_blocks=tuple(video.stg_blocks) if video.needs_perturbed else (),
            perturb_audio_blocks=tuple(audio.stg_blocks) if audio.needs_perturbed else (),
        ))
    if video.needs_isolated or audio.needs_isolated:
        branches.append(CFGBranch("isolated", "positive", isolate_modalities=True, cost=ISOLATED_PASS_COST))
    return CFGPolicy("ltx2_multimodal", tuple(branches), LTXMultimodal(video=video, audio=audio))


def custom(branches: Iterable[tuple[str, str, float]]) -> CFGPolicy:
    """Any branches: pred = c + sum_i w_i (c - b_i); each item is (name, 'positive'|'negative', weight).

    The conditional branch 'cond' (positive) is always present with the implicit weight 1;
    a line of that name is refused rather than dropped, since its weight would be ignored.
    """
    items = [(str(n).strip(), str(c).strip(), float(w)) for n, c, w in branches]
    out = [CFGBranch("cond", "positive")]
    weights = []
    for name, conds, weight in items:
        if name == "cond":
            raise PolicyError(
                f"Custom branch 'cond:{conds}:{weight:g}': 'cond' is the conditional branch, which every custom "
                f"policy evaluates on the positive conditioning and weighs implicitly (pred = cond + sum of "
                f"weight * (cond - branch)), so this line would be ignored. Delete it, or give the extra branch "
                f"another name, e.g. 'cond2:{conds}:{weight:g}'.")
        out.append(CFGBranch(name, conds))
        weights.append((name, weight))
    return CFGPolicy("custom", tuple(out), WeightedBranches(tuple(weights)))


def parse_custom_spec(text: str) -> list[tuple[str, str, float]]:
    """Parse 'name:conds:weight' entries, one per line or comma-separated, e.g. 'neg:negative:2.0'."""
    items = []
    for raw in text.replace(",", "\n").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(":")]
        if len(parts) != 3:
            raise PolicyError(f"Custom branch {clip(line)}: write it as name:positive|negative:weight, e.g. 'neg:negative:2.0'.")
        try:
            weight = float(parts[2])
        except ValueError:
            raise PolicyError(f"Custom branch {clip(line)}: weight {clip(parts[2], 30)} is not a number.") from None
        items.append((parts[0], parts[1], weight))
    if not items:
        raise PolicyError("The custom preset needs at least one branch besides 'cond', e.g. 'neg:negative:2.0'.")
    return items
