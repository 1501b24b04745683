"""CFGPolicy Builder and the LTX-2 guidance parameter nodes: widgets -> CFG_POLICY.

The builder shows the widgets of standard CFG only (the preset every model can use). LTX-2
parameters come from two small nodes chained into it, one per modality, as LTX-2's own
guider parameter nodes do (``LTX-2 Video Guidance``, ``LTX-2 Audio Guidance``); left
unconnected, the official LTX-2 values apply. Custom branches come in as text (a core
String (Multiline) node). ComfyUI 0.3.75 has no V3 dynamic inputs (``io.DynamicCombo`` is
0.29 only), so the preset cannot swap the builder's own widgets on both versions.

``CFGPolicyBuilder`` (the id before 0.2, all 18 widgets on one node) stays registered,
deprecated and hidden from search, so saved workflows load and run unchanged.
"""
from __future__ import annotations

import math

from comfy_api.latest import io

from cfg_runtime.errors import PolicyError
from cfg_runtime.guidance.blocks import parse_block_list
from cfg_runtime.guidance.ltx import ModalityGuidance
from cfg_runtime.guidance.presets import PRESET_NAMES, custom, ltx2_multimodal, parse_custom_spec, standard_cfg

from .common import ALIASES_COMMON, PREFIX, categories, schema

CFG_POLICY = io.Custom("CFG_POLICY")
LTX2_VIDEO_GUIDANCE = io.Custom("CFGP_LTX2_VIDEO_GUIDANCE")
LTX2_AUDIO_GUIDANCE = io.Custom("CFGP_LTX2_AUDIO_GUIDANCE")
OFFICIAL_VIDEO, OFFICIAL_AUDIO = ModalityGuidance.official("2.0")
DEFAULT_CUSTOM = "negative:negative:3.0"

POLICY_TIP = ("The guidance policy: which branches run at every step and how they combine. Connect it to a "
              "Multi-Branch Guider or an LTX2 Sampler.")
BRANCHES_TIP = "One line per branch: what runs every step (connect a Preview as Text to read it)."


def _float(id_, default, lo, hi, step, tip, **kw):
    return io.Float.Input(id_, default=default, min=lo, max=hi, step=step, round=0.001, tooltip=tip, **kw)


def modality_inputs(label: str, d: ModalityGuidance, prefix: str = "") -> list:
    """The six LTX-2 parameters of one modality as V3 inputs (``prefix`` e.g. 'video_')."""
    other = "audio" if label == "video" else "video"
    blocks = f"{prefix}stg_blocks"
    return [
        _float(f"{prefix}cfg", d.cfg, 0.0, 100.0, 0.1,
               f"LTX-2 {label} CFG scale: {label} += (cfg - 1)·(cond − negative-prompt pass). 1 = no negative term "
               f"for {label} (the negative pass runs only if some modality needs it)."),
        _float(f"{prefix}stg", d.stg, 0.0, 100.0, 0.1,
               f"LTX-2 {label} STG scale (spatio-temporal guidance): {label} += stg·(cond − perturbed pass), where "
               f"the perturbed pass replaces the {label} self-attention of {blocks} by its values. 0 = no STG for "
               f"{label} (no perturbed pass unless {other} STG is on)."),
        io.String.Input(blocks, default=",".join(str(b) for b in d.stg_blocks), tooltip=(
            f"Transformer blocks (0-based, comma-separated) whose {label} self-attention the perturbed pass "
            f"replaces; the {other} stream keeps its own list. LTX-2: 29, LTX-2.3: 28 (both models have 48 blocks, "
            f"0-47). Needed when {prefix}stg is not 0; ignored when it is 0, so the defaults can stay filled in.")),
        _float(f"{prefix}modality", d.modality, 0.0, 100.0, 0.1,
               f"LTX-2 {label} modality scale: {label} += (modality - 1)·(cond − modality-isolated pass), the pass "
               f"without audio↔video cross-attention. 1 = no modality term."),
        _float(f"{prefix}rescale", d.rescale, 0.0, 1.0, 0.01,
               f"LTX-2 {label} guidance rescale: the guided {label} is multiplied by rescale·std(cond)/std(guided) + "
               f"(1 − rescale). 0 = off, 1 = full std matching."),
        io.Int.Input(f"{prefix}skip_step", default=d.skip_step, min=0, max=100, tooltip=(
            f"Guide {label} on every (skip_step + 1)-th step only (0, N+1, 2(N+1), …) and reuse its last guided "
            f"result in between; on those steps the {label} stream is not computed, and a step that every modality "
            f"skips runs no forward. 0 = every step.")),
    ]


def standard_inputs() -> list:
    return [
        _float("cfg", 4.0, 0.0, 100.0, 0.1, "standard_cfg: the CFG scale (1 = cond only: one branch, nothing to "
                                           "parallelise)."),
        _float("guidance_rescale", 0.0, 0.0, 1.0, 0.01, "standard_cfg: rescale the guided prediction's std towards "
                                                       "the cond prediction's (0 = off)."),
        io.Boolean.Input("cfg_zero_star", default=False, tooltip="standard_cfg: CFG-Zero* optimised scale."),
        io.Int.Input("zero_init_steps", default=0, min=0, max=100,
                     tooltip="standard_cfg with CFG-Zero*: the first steps that output zero."),
    ]


PRESET_TIP = ("standard_cfg: cond + negative (any model), set by this node's widgets. ltx2_multimodal: LTX-2 "
              "cond/negative/STG/modality passes with separate video and audio parameters (the official LTX-2 values, "
              "or connect LTX-2 Video/Audio Guidance nodes). custom: your own branches, as text in custom_branches.")


def parse_blocks(text: str, label: str) -> tuple[int, ...]:
    """'29' / '28, 29' -> (28, 29); PolicyError that says what to write for anything else."""
    try:
        return parse_block_list(text)
    except ValueError as exc:
        raise PolicyError(f"{label}: {exc}") from None


def modality_guidance(name: str, *, cfg, stg, stg_blocks, modality, rescale, skip_step,
                      field=lambda key: key) -> ModalityGuidance:
    """One modality's parameters, refused here (before sampling) when they cannot run.

    ``name``: 'video' or 'audio'; ``field(key)``: how the widget of ``key`` is called in
    messages. Blocks with stg 0 are accepted and dropped: no perturbed pass for this
    modality, and the default block stays in the widget for when STG is switched on. A block
    beyond the model's depth is refused at sampling, where the model is known."""
    blocks = parse_blocks(stg_blocks, field("stg_blocks"))
    stg = float(stg)
    if not math.isclose(stg, 0.0) and not blocks:
        raise PolicyError(f"{field('stg')} is {stg} but {field('stg_blocks')} is empty: write the blocks to "
                          f"perturb, e.g. '29' (LTX-2) or '28' (LTX-2.3), or set {field('stg')} to 0.")
    try:
        params = ModalityGuidance(cfg=float(cfg), stg=stg, stg_blocks=blocks if not math.isclose(stg, 0.0) else (),
                                  modality=float(modality), rescale=float(rescale), skip_step=int(skip_step))
        params.validate()
    except ValueError as exc:
        raise PolicyError(f"LTX-2 {name} guidance: {exc}") from None
    return params


def build_policy(preset: str, cfg: float, guidance_rescale: float, cfg_zero_star: bool, zero_init_steps: int,
                 video: ModalityGuidance | None, audio: ModalityGuidance | None, custom_branches: str | None):
    if preset == "standard_cfg":
        policy = standard_cfg(cfg, rescale=guidance_rescale, cfg_zero_star=cfg_zero_star,
                              zero_init_steps=zero_init_steps)
    elif preset == "ltx2_multimodal":
        policy = ltx2_multimodal(video if video is not None else OFFICIAL_VIDEO,
                                 audio if audio is not None else OFFICIAL_AUDIO)
    elif preset == "custom":
        if custom_branches is None:
            raise PolicyError("The custom preset reads its branches from the custom_branches input: connect a String "
                              "(Multiline) node with one branch per line as name:positive|negative:weight, e.g. "
                              f"'{DEFAULT_CUSTOM}'.")
        policy = custom(parse_custom_spec(custom_branches))
    else:
        raise PolicyError(f"Unknown preset {preset!r}: choose one of {', '.join(PRESET_NAMES)}.")
    return policy


class CFGPolicyBuilder(io.ComfyNode):
    """Builds a guidance policy: standard CFG, LTX-2 multimodal, or custom branches."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id=PREFIX + "PolicyBuilder",
            display_name="CFGPolicy Builder",
            category=categories()["guiders"],
            description=("Describes the guidance branches evaluated at every step and how their predictions combine "
                         "(CFG, LTX-2 multimodal guidance with STG and modality passes, or custom). Feed it to the "
                         "Multi-Branch Guider or the LTX2 Sampler, which run the branches in parallel on several "
                         "GPUs; the branch list is the second output."),
            search_aliases=ALIASES_COMMON + ["cfg policy", "guidance policy", "STG", "spatiotemporal guidance",
                                             "LTX-2 guidance", "multimodal guidance", "cfg zero star"],
            inputs=[
                io.Combo.Input("preset", options=list(PRESET_NAMES), default="standard_cfg", tooltip=PRESET_TIP),
                *standard_inputs(),
                LTX2_VIDEO_GUIDANCE.Input("video", optional=True, tooltip=(
                    "ltx2_multimodal: video parameters from an LTX-2 Video Guidance node; unconnected = the official "
                    "LTX-2 values (cfg 3, STG 1 on block 29, modality 3, rescale 0.7).")),
                LTX2_AUDIO_GUIDANCE.Input("audio", optional=True, tooltip=(
                    "ltx2_multimodal: audio parameters from an LTX-2 Audio Guidance node; unconnected = the official "
                    "LTX-2 values (cfg 7, STG 1 on block 29, modality 3, rescale 0.7).")),
                io.String.Input("custom_branches", optional=True, force_input=True, multiline=True, tooltip=(
                    "custom: one branch per line as name:positive|negative:weight (connect a String (Multiline) "
                    "node); pred = cond + sum(weight * (cond - branch)).")),
            ],
            outputs=[CFG_POLICY.Output("policy", display_name="policy", tooltip=POLICY_TIP),
                     io.String.Output("branches", display_name="branches", tooltip=BRANCHES_TIP)],
        )

    @classmethod
    def execute(cls, preset, cfg, guidance_rescale, cfg_zero_star, zero_init_steps, video=None, audio=None,
                custom_branches=None) -> io.NodeOutput:
        policy = build_policy(preset, cfg, guidance_rescale, cfg_zero_star, zero_init_steps, video, audio,
                              custom_branches)
        return io.NodeOutput(policy, policy.describe())


class _ModalityGuidanceNode(io.ComfyNode):
    LABEL = "video"
    TYPE = LTX2_VIDEO_GUIDANCE
    OFFICIAL = OFFICIAL_VIDEO

    @classmethod
    def define_schema(cls):
        label = cls.LABEL
        return schema(
            node_id=f"{PREFIX}LTX2{label.capitalize()}Guidance",
            display_name=f"LTX-2 {label.capitalize()} Guidance (CFG, STG, modality)",
            category=categories()["guiders"],
            description=(f"The LTX-2 multimodal guidance parameters of the {label} stream (ltx-core's "
                         f"MultiModalGuider, per modality): CFG, STG (spatio-temporal guidance, a perturbed pass), "
                         f"modality-isolated scale, rescale and skip_step. The defaults are the official LTX-2 values; "
                         f"connect it to the {label} input of a CFGPolicy Builder with preset ltx2_multimodal."),
            search_aliases=ALIASES_COMMON + ["STG", "spatiotemporal guidance", "LTX-2 guidance", "LTX2",
                                             f"{label} guidance", "modality guidance", "guider parameters"],
            inputs=modality_inputs(label, cls.OFFICIAL),
            outputs=[cls.TYPE.Output(label, display_name=label, tooltip=(
                f"The {label} guidance parameters, for the {label} input of a CFGPolicy Builder."))],
        )

    @classmethod
    def execute(cls, cfg, stg, stg_blocks, modality, rescale, skip_step) -> io.NodeOutput:
        return io.NodeOutput(modality_guidance(cls.LABEL, cfg=cfg, stg=stg, stg_blocks=stg_blocks, modality=modality,
                                               rescale=rescale, skip_step=skip_step))


class LTX2VideoGuidance(_ModalityGuidanceNode):
    LABEL, TYPE, OFFICIAL = "video", LTX2_VIDEO_GUIDANCE, OFFICIAL_VIDEO


class LTX2AudioGuidance(_ModalityGuidanceNode):
    LABEL, TYPE, OFFICIAL = "audio", LTX2_AUDIO_GUIDANCE, OFFICIAL_AUDIO


class _LegacyPolicyBuilder(io.ComfyNode):
    """The builder before 0.2: every preset's widgets on one node (saved workflows)."""

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="CFGPolicyBuilder",
            display_name="CFGPolicy Builder",
            category=categories()["guiders"],
            description=("Deprecated (the id of workflows saved before 0.2): use the CFGPolicy Builder with LTX-2 "
                         "Video/Audio Guidance nodes. Builds the same policy from every preset's widgets."),
            is_deprecated=True,
            inputs=[io.Combo.Input("preset", options=list(PRESET_NAMES), default="standard_cfg", tooltip=PRESET_TIP),
                    *standard_inputs(),
                    *modality_inputs("video", OFFICIAL_VIDEO, "video_"),
                    *modality_inputs("audio", OFFICIAL_AUDIO, "audio_"),
                    io.String.Input("custom_branches", default=DEFAULT_CUSTOM, multiline=True, tooltip=(
                        "custom: one branch per line as name:positive|negative:weight; "
                        "pred = cond + sum(weight * (cond - branch))."))],
            outputs=[CFG_POLICY.Output("policy", display_name="policy", tooltip=POLICY_TIP),
                     io.String.Output("branches", display_name="branches", tooltip=BRANCHES_TIP)],
        )

    @classmethod
    def execute(cls, preset, cfg, guidance_rescale, cfg_zero_star, zero_init_steps, custom_branches,
                **ltx) -> io.NodeOutput:
        video = audio = None
        if preset == "ltx2_multimodal":
            video, audio = (modality_guidance(m, field=lambda key, m=m: f"{m}_{key}",
                                              **{k[len(m) + 1:]: v for k, v in ltx.items() if k.startswith(m + "_")})
                            for m in ("video", "audio"))
        policy = build_policy(preset, cfg, guidance_rescale, cfg_zero_star, zero_init_steps, video, audio,
                              custom_branches)
        return io.NodeOutput(policy, policy.describe())


NODES = [CFGPolicyBuilder, LTX2VideoGuidance, LTX2AudioGuidance]
LEGACY = {"CFGPolicyBuilder": _LegacyPolicyBuilder}
