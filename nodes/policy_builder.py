"""CFGPolicy Builder: widgets -> CFG_POLICY (which branches exist and how they combine)."""
from __future__ import annotations

import math

from cfg_runtime.errors import PolicyError
from cfg_runtime.guidance.ltx import ModalityGuidance
from cfg_runtime.guidance.presets import PRESET_NAMES, custom, ltx2_multimodal, parse_custom_spec, standard_cfg

CATEGORY = "sampling/cfg_parallel"
_V, _A = ModalityGuidance.LTX2_VIDEO, ModalityGuidance.LTX2_AUDIO


def _float(default, lo, hi, step, tip):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "round": 0.001, "tooltip": tip})


def _modality_inputs(prefix: str, d: ModalityGuidance, label: str) -> dict:
    other = "audio" if label == "video" else "video"
    return {
        f"{prefix}_cfg": _float(d.cfg, 0.0, 100.0, 0.1,
                                f"LTX-2 {label} CFG scale: {label} += (cfg - 1)·(cond − negative-prompt pass). "
                                f"1 = no negative term for {label} (the negative pass runs only if some modality "
                                f"needs it)."),
        f"{prefix}_stg": _float(d.stg, 0.0, 100.0, 0.1,
                                f"LTX-2 {label} STG scale: {label} += stg·(cond − perturbed pass), where the perturbed "
                                f"pass replaces the {label} self-attention of {prefix}_stg_blocks by its values. "
                                f"0 = no STG for {label} (no perturbed pass unless {other} STG is on)."),
        f"{prefix}_stg_blocks": ("STRING", {"default": ",".join(str(b) for b in d.stg_blocks), "tooltip":
                                 f"Transformer blocks (0-based, comma-separated) whose {label} self-attention the "
                                 f"perturbed pass replaces; the {other} stream keeps its own list. LTX-2: 29, "
                                 f"LTX-2.3: 28 (both models have 48 blocks, 0-47). Needed when {prefix}_stg is not 0; "
                                 f"ignored when it is 0, so the defaults can stay filled in."}),
        f"{prefix}_modality": _float(d.modality, 0.0, 100.0, 0.1,
                                     f"LTX-2 {label} modality scale: {label} += (modality - 1)·(cond − modality-isolated "
                                     f"pass), the pass without audio↔video cross-attention. 1 = no modality term."),
        f"{prefix}_rescale": _float(d.rescale, 0.0, 1.0, 0.01,
                                    f"LTX-2 {label} guidance rescale: the guided {label} is multiplied by "
                                    f"rescale·std(cond)/std(guided) + (1 − rescale). 0 = off, 1 = full std matching."),
        f"{prefix}_skip_step": ("INT", {"default": d.skip_step, "min": 0, "max": 100, "tooltip":
                                        f"Guide {label} on every (skip_step + 1)-th step only (0, N+1, 2(N+1), …) and "
                                        f"reuse its last guided result in between; on those steps the {label} stream "
                                        f"is not computed, and a step that every modality skips runs no forward. "
                                        f"0 = every step."}),
    }


def parse_blocks(text: str, label: str) -> tuple[int, ...]:
    """'29' / '28, 29' -> (28, 29); PolicyError that says what to write for anything else."""
    blocks: list[int] = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise PolicyError(f"{label}: '{part}' is not a block index. Write block numbers counting from 0, separated "
                              f"by commas, e.g. '29' (LTX-2) or '28' (LTX-2.3) or '28,29'.")
        block = int(part)
        if block in blocks:
            raise PolicyError(f"{label}: block {block} is listed twice in '{text}'; list each block once.")
        blocks.append(block)
    return tuple(blocks)


class CFGPolicyBuilder:
    """Builds a guidance policy: standard CFG, LTX-2 multimodal, or custom branches."""

    DESCRIPTION = ("Describes the guidance branches evaluated at every step and how their predictions combine. "
                   "Feed it to the Multi-Branch Guider or the LTX2 Sampler; the branch list is the second output.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CFG_POLICY", "STRING")
    RETURN_NAMES = ("policy", "branches")
    OUTPUT_TOOLTIPS = ("The policy.", "One line per branch: what runs every step.")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "preset": (list(PRESET_NAMES), {"default": "standard_cfg", "tooltip":
                           "standard_cfg: cond + negative (any model). ltx2_multimodal: LTX-2 cond/negative/STG/"
                           "modality passes with separate video and audio parameters. custom: your own branches."}),
                "cfg": _float(4.0, 0.0, 100.0, 0.1, "standard_cfg: the CFG scale (1 = cond only)."),
                "guidance_rescale": _float(0.0, 0.0, 1.0, 0.01, "standard_cfg: rescale the guided prediction's std "
                                                                "towards the cond prediction's (0 = off)."),
                "cfg_zero_star": ("BOOLEAN", {"default": False, "tooltip": "standard_cfg: CFG-Zero* optimised scale."}),
                "zero_init_steps": ("INT", {"default": 0, "min": 0, "max": 100,
                                            "tooltip": "standard_cfg with CFG-Zero*: steps that output zero."}),
                **_modality_inputs("video", _V, "video"),
                **_modality_inputs("audio", _A, "audio"),
                "custom_branches": ("STRING", {"default": "negative:negative:3.0", "multiline": True, "tooltip":
                                    "custom: one branch per line as name:positive|negative:weight; "
                                    "pred = cond + sum(weight * (cond - branch))."}),
            }
        }

    def build(self, preset, cfg, guidance_rescale, cfg_zero_star, zero_init_steps, custom_branches, **ltx):
        if preset == "standard_cfg":
            policy = standard_cfg(cfg, rescale=guidance_rescale, cfg_zero_star=cfg_zero_star,
                                  zero_init_steps=zero_init_steps)
        elif preset == "ltx2_multimodal":
            policy = ltx2_multimodal(self._modality(ltx, "video"), self._modality(ltx, "audio"))
        elif preset == "custom":
            policy = custom(parse_custom_spec(custom_branches))
        else:
            raise PolicyError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}.")
        return (policy, policy.describe())

    @staticmethod
    def _modality(values: dict, prefix: str) -> ModalityGuidance:
        """One modality's parameters, refused here (before sampling) when they cannot run.

        Blocks with stg 0 are accepted and dropped: no perturbed pass for this modality, and
        the default block stays in the widget for when STG is switched on. A block beyond the
        model's depth is refused at sampling, where the model is known."""
        blocks = parse_blocks(values[f"{prefix}_stg_blocks"], f"{prefix}_stg_blocks")
        stg = float(values[f"{prefix}_stg"])
        if not math.isclose(stg, 0.0) and not blocks:
            raise PolicyError(f"{prefix}_stg is {stg} but {prefix}_stg_blocks is empty: write the blocks to "
                              f"perturb, e.g. '29' (LTX-2) or '28' (LTX-2.3), or set {prefix}_stg to 0.")
        try:
            params = ModalityGuidance(
                cfg=float(values[f"{prefix}_cfg"]), stg=stg, stg_blocks=blocks if not math.isclose(stg, 0.0) else (),
                modality=float(values[f"{prefix}_modality"]), rescale=float(values[f"{prefix}_rescale"]),
                skip_step=int(values[f"{prefix}_skip_step"]))
            params.validate()
        except ValueError as exc:
            raise PolicyError(f"LTX-2 {prefix} guidance: {exc}") from None
        return params
