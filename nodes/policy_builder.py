"""CFGPolicy Builder: widgets -> CFG_POLICY (which branches exist and how they combine)."""
from __future__ import annotations

from cfg_runtime.errors import PolicyError
from cfg_runtime.ltx_guidance import ModalityGuidance
from cfg_runtime.presets import PRESET_NAMES, custom, ltx2_multimodal, parse_custom_spec, standard_cfg

CATEGORY = "sampling/cfg_parallel"
_V, _A = ModalityGuidance.LTX2_VIDEO, ModalityGuidance.LTX2_AUDIO


def _float(default, lo, hi, step, tip):
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "round": 0.001, "tooltip": tip})


def _modality_inputs(prefix: str, d: ModalityGuidance, label: str) -> dict:
    return {
        f"{prefix}_cfg": _float(d.cfg, 0.0, 100.0, 0.1, f"LTX-2 {label} CFG scale (1 = no negative pass for {label})."),
        f"{prefix}_stg": _float(d.stg, 0.0, 100.0, 0.1, f"LTX-2 {label} STG scale (0 = no perturbed pass)."),
        f"{prefix}_stg_blocks": ("STRING", {"default": ",".join(str(b) for b in d.stg_blocks),
                                            "tooltip": "Comma-separated transformer block indices whose self-attention "
                                                       "the perturbed pass replaces (LTX-2: 29, LTX-2.3: 28)."}),
        f"{prefix}_modality": _float(d.modality, 0.0, 100.0, 0.1,
                                     f"LTX-2 {label} modality scale (1 = no modality-isolated pass)."),
        f"{prefix}_rescale": _float(d.rescale, 0.0, 1.0, 0.01, f"LTX-2 {label} guidance rescale (0 = off)."),
        f"{prefix}_skip_step": ("INT", {"default": d.skip_step, "min": 0, "max": 100,
                                        "tooltip": f"Guide {label} only every (skip_step + 1)-th step and reuse the "
                                                   f"previous guided result in between (0 = every step)."}),
    }


def parse_blocks(text: str, label: str) -> tuple[int, ...]:
    blocks = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.lstrip("-").isdigit() or int(part) < 0:
            raise PolicyError(f"{label}: '{part}' is not a block index; write non-negative integers like '29' or '28,29'.")
        blocks.append(int(part))
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
        try:
            params = ModalityGuidance(
                cfg=float(values[f"{prefix}_cfg"]), stg=float(values[f"{prefix}_stg"]),
                stg_blocks=parse_blocks(values[f"{prefix}_stg_blocks"], f"{prefix}_stg_blocks"),
                modality=float(values[f"{prefix}_modality"]), rescale=float(values[f"{prefix}_rescale"]),
                skip_step=int(values[f"{prefix}_skip_step"]))
            params.validate()
        except ValueError as exc:
            raise PolicyError(f"LTX-2 {prefix} guidance: {exc}") from None
        if params.needs_perturbed and not params.stg_blocks:
            raise PolicyError(f"{prefix}_stg is {params.stg} but {prefix}_stg_blocks is empty: list the blocks to "
                              f"perturb (LTX-2: 29, LTX-2.3: 28) or set {prefix}_stg to 0.")
        return params
