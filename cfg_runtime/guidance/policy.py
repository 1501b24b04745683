"""Branch policies: which guidance branches exist and how their predictions combine.

A policy is data (frozen dataclasses), serialisable to JSON (workflows) and pickle
(workers). The combine is the one serial formula; parallel execution feeds it the
same tensors, so parallel results equal serial ones bit for bit.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Union

import torch

from ..errors import PolicyError
from .blocks import block_indices
from .ltx import (BRANCHES, ModalityGuidance, branch_weights, guide_modality, needed_branches, rescale_to_cond,
                  skips_step)

CONDS = ("positive", "negative", "middle")  # middle: DualCFGGuider's second conditioning (cond2)


@dataclass(frozen=True)
class CFGBranch:
    """One model evaluation per step: which conditioning it sees and how the forward is altered.

    ``perturb_blocks`` / ``perturb_audio_blocks``: blocks whose video / audio self-attention
    the perturbed (STG) pass replaces. ``run_video`` / ``run_audio`` False: that stream of
    an LTX-2 audio+video model is not computed in this forward (set per step by the
    LTX-2 rule on steps where only the other modality is guided, as ltx-pipelines does).
    """

    name: str
    cond: str = "positive"  # the conditioning it sees: "positive", "negative" (or DualCFG's "middle")
    perturb_blocks: tuple[int, ...] = ()
    perturb_audio_blocks: tuple[int, ...] = ()
    isolate_modalities: bool = False
    cost: float = 1.0
    run_video: bool = True
    run_audio: bool = True

    def validate(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise PolicyError("A branch needs a non-empty name.")
        if self.cond not in CONDS:
            raise PolicyError(f"Branch '{self.name}': cond must be one of {CONDS}, got {self.cond!r}.")
        if not (self.cost > 0 and math.isfinite(self.cost)):
            raise PolicyError(f"Branch '{self.name}': cost must be a positive number, got {self.cost}.")
        try:
            block_indices(self.perturb_blocks + self.perturb_audio_blocks)
        except ValueError as exc:
            raise PolicyError(f"Branch '{self.name}': {exc}.") from None

    @property
    def is_plain(self) -> bool:
        """True when the forward is unaltered (only the conditioning differs)."""
        return not (self.perturb_blocks or self.perturb_audio_blocks or self.isolate_modalities
                    or not self.run_video or not self.run_audio)


@dataclass(frozen=True)
class CombineContext:
    """What a combine rule may read besides the predictions."""

    x: torch.Tensor
    step: int
    latent_shapes: tuple[tuple[int, ...], ...] | None = None
    memory: dict = field(default_factory=dict)  # per sampling run (skip_step reuse)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


class _EveryBranchEveryStep:
    """A rule that runs all its branches, both streams, on every step."""

    def active(self, names: tuple[str, ...], step: int, modalities: int = 1) -> tuple[str, ...]:
        return names

    def streams(self, step: int, modalities: int = 1) -> tuple[bool, bool]:
        return True, True


@dataclass(frozen=True)
class StandardCFG(_EveryBranchEveryStep):
    """pred = u + scale (c - u), optionally CFG-Zero* and guidance rescale."""

    scale: float
    rescale: float = 0.0
    cfg_zero_star: bool = False
    zero_init_steps: int = 0
    kind: str = "standard"

    def validate(self, names: tuple[str, ...]) -> None:
        if not math.isfinite(self.scale):
            raise PolicyError(f"CFG scale must be a finite number, got {self.scale}.")
        if not 0.0 <= self.rescale <= 1.0:
            raise PolicyError(f"Guidance rescale must be between 0 and 1, got {self.rescale}.")
        if self.zero_init_steps < 0:
            raise PolicyError(f"zero_init_steps must be >= 0, got {self.zero_init_steps}.")
        _require(names, ("cond",) + (("negative",) if self.scale != 1.0 else ()), "standard CFG")

    @property
    def cfg_scale(self) -> float:
        """The classifier-free guidance scale this rule applies to cond against the negative."""
        return self.scale

    def combine(self, preds: Mapping[str, torch.Tensor], ctx: CombineContext) -> torch.Tensor:
        cond = preds["cond"]
        if self.scale == 1.0 or "negative" not in preds:
            return cond
        if self.cfg_zero_star and ctx.step < self.zero_init_steps:
            return torch.zeros_like(cond)
        c, u = _fp32(cond), _fp32(preds["negative"])
        if self.cfg_zero_star:
            # optimised scale on the noise predictions (x - denoised), per batch item
            x = _fp32(ctx.x)
            ce, ue = x - c, x - u
            dims = tuple(range(1, ce.ndim))
            alpha = (ce * ue).sum(dim=dims, keepdim=True) / ((ue * ue).sum(dim=dims, keepdim=True) + 1e-8)
            ue = ue * alpha
            pred = x - (ue + self.scale * (ce - ue))
        else:
            pred = u + self.scale * (c - u)
        if self.rescale:
            pred = rescale_to_cond(pred, c, self.rescale)
        return pred.to(cond.dtype)


@dataclass(frozen=True)
class WeightedBranches(_EveryBranchEveryStep):
    """Custom rule: pred = c + sum_i w_i (c - b_i) over the named branches."""

    weights: tuple[tuple[str, float], ...]
    kind: str = "weighted"

    def validate(self, names: tuple[str, ...]) -> None:
        _require(names, ("cond",) + tuple(n for n, _ in self.weights), "custom")
        for name, weight in self.weights:
            if not math.isfinite(weight):
                raise PolicyError(f"Weight of branch '{name}' must be finite, got {weight}.")

    @property
    def cfg_scale(self) -> float:
        """The CFG scale equivalent to the negative branch's weight: c + w (c - u) = u + (1 + w)(c - u)."""
        return 1.0 + sum(w for n, w in self.weights if n == "negative")

    def combine(self, preds: Mapping[str, torch.Tensor], ctx: CombineContext) -> torch.Tensor:
        cond = preds["cond"]
        c = _fp32(cond)
        pred = c.clone()
        for name, weight in self.weights:
            pred = pred + weight * (c - _fp32(preds[name]))
        return pred.to(cond.dtype)


@dataclass(frozen=True)
class LTXMultimodal:
    """LTX-2 guidance, computed per modality on the packed audio+video prediction."""

    video: ModalityGuidance
    audio: ModalityGuidance
    kind: str = "ltx_multimodal"

    def validate(self, names: tuple[str, ...]) -> None:
        for label, params in (("video", self.video), ("audio", self.audio)):
            try:
                params.validate()
            except ValueError as exc:
                raise PolicyError(f"LTX-2 {label} guidance: {exc}") from None
        _require(names, ("cond",) + tuple(n for n, _ in _ltx_branch_flags(self) if _), "LTX-2 multimodal")

    @property
    def cfg_scale(self) -> float:
        """The video CFG scale (the first modality's, as a single-scale caller sees it)."""
        return self.video.cfg

    def _params(self, n_parts: int) -> tuple[ModalityGuidance, ...]:
        return (self.video,) if n_parts == 1 else (self.video, self.audio)

    def active(self, names: tuple[str, ...], step: int, modalities: int = 2) -> tuple[str, ...]:
        """The passes this step runs. ``modalities``: 1 for a video-only latent (the audio
        parameters then ask for nothing), 2 for audio+video.

        As ltx-pipelines: a step that every present modality skips runs no forward, and a pass
        runs only where some present modality needs it. Beyond it, nothing thrown away: a pass
        runs only where a modality guided at this step gives it a non-zero weight (a pass that
        only a skipping modality needs would be discarded; the bits do not change)."""
        present = self._params(modalities)
        guided = [p for p in present if not skips_step(p, step)]
        if not guided:
            return ()
        wanted = {"cond"}
        for name in BRANCHES[1:]:
            if any(name in needed_branches(p, 0) for p in present) and any(branch_weights(p)[name] != 0
                                                                           for p in guided):
                wanted.add(name)
        return tuple(n for n in names if n in wanted)

    def streams(self, step: int, modalities: int = 2) -> tuple[bool, bool]:
        """(run video, run audio) for this step's forwards: on an audio+video latent a modality
        that skips this step is not computed (ltx-pipelines disables it in the forward)."""
        if modalities < 2:
            return True, True
        return not skips_step(self.video, step), not skips_step(self.audio, step)

    def combine(self, preds: Mapping[str, torch.Tensor], ctx: CombineContext) -> torch.Tensor:
        shapes = ctx.latent_shapes or (tuple(ctx.x.shape),)
        parts = {name: _unpack(t, shapes) for name, t in preds.items()}
        out = []
        for i, p in enumerate(self._params(len(shapes))):
            key = f"ltx_prev_{i}"
            if skips_step(p, ctx.step) and key in ctx.memory:
                out.append(ctx.memory[key])  # reuse this modality's previous guided result
                continue
            if "cond" not in parts:
                raise PolicyError(f"LTX-2 guidance: no cond prediction at step {ctx.step} and nothing to reuse.")
            guided = guide_modality(
                p,
                parts["cond"][i],
                negative=_part(parts, "negative", i),
                perturbed=_part(parts, "perturbed", i),
                isolated=_part(parts, "isolated", i),
            )
            ctx.memory[key] = guided
            out.append(guided)
        return _pack(out, ctx.x if "cond" not in preds else preds["cond"])


def _part(parts: dict, name: str, index: int):
    return parts[name][index] if name in parts else None


def _unpack(t: torch.Tensor, shapes: tuple[tuple[int, ...], ...]) -> list[torch.Tensor]:
    if len(shapes) == 1:
        return [t]
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape[1:])
        out.append(t[:, :, offset:offset + n].reshape((t.shape[0],) + tuple(shape[1:])))
        offset += n
    return out


def _pack(parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p.reshape(p.shape[0], 1, -1) for p in parts], dim=-1).to(like.dtype)


def _ltx_branch_flags(rule: LTXMultimodal) -> list[tuple[str, bool]]:
    v, a = rule.video, rule.audio
    return [
        ("negative", v.needs_negative or a.needs_negative),
        ("perturbed", v.needs_perturbed or a.needs_perturbed),
        ("isolated", v.needs_isolated or a.needs_isolated),
    ]


def _require(names: tuple[str, ...], needed: tuple[str, ...], label: str) -> None:
    missing = [n for n in needed if n not in names]
    if missing:
        raise PolicyError(f"The {label} rule needs branches {missing}, but the policy has {list(names)}.")


Rule = Union[StandardCFG, WeightedBranches, LTXMultimodal]


@dataclass(frozen=True)
class CFGPolicy:
    """A set of branches and the rule that combines their predictions."""

    name: str
    branches: tuple[CFGBranch, ...]
    rule: Rule

    def __post_init__(self) -> None:
        if not self.branches:
            raise PolicyError("A policy needs at least one branch (the conditional one, 'cond').")
        seen: set[str] = set()
        for branch in self.branches:
            branch.validate()
            if branch.name in seen:
                raise PolicyError(f"Duplicate branch name '{branch.name}': every branch needs a unique name.")
            seen.add(branch.name)
        self.rule.validate(self.names)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.branches)

    def branch(self, name: str) -> CFGBranch:
        for b in self.branches:
            if b.name == name:
                return b
        raise KeyError(name)

    def active_branches(self, step: int, modalities: int | None = None) -> tuple[CFGBranch, ...]:
        """The branches evaluated at this step, as they run at this step (LTX-2: without the
        passes no guided modality needs, and without the stream of a modality that skips).
        ``modalities``: parts of the latent (1 plain, 2 LTX-2 audio+video); None: the rule's default."""
        kw = {} if modalities is None else {"modalities": modalities}
        active = set(self.rule.active(self.names, step, **kw))
        run_video, run_audio = self.rule.streams(step, **kw)
        out = []
        for b in self.branches:
            if b.name in active:
                out.append(b if (run_video and run_audio) else replace(b, run_video=run_video, run_audio=run_audio))
        return tuple(out)

    def combine(self, preds: Mapping[str, torch.Tensor], ctx: CombineContext) -> torch.Tensor:
        return self.rule.combine(preds, ctx)

    @property
    def batch_statistic(self) -> str | None:
        """What of the rule mixes the samples of a batch (guidance rescale: one std over the whole
        tensor, batch included), or None: a rule that is per sample (CFG-Zero* is) splits over a batch."""
        rescales = [getattr(self.rule, "rescale", 0.0)] + [getattr(getattr(self.rule, m, None), "rescale", 0.0)
                                                           for m in ("video", "audio")]
        return "guidance rescale (one std over the whole batch)" if any(rescales) else None

    def describe(self) -> str:
        """One line per branch, for the UI."""
        lines = [f"policy '{self.name}' ({self.rule.kind}), {len(self.branches)} branch(es) per step:"]
        for b in self.branches:
            extra = []
            if b.perturb_blocks:
                extra.append(f"STG video blocks {list(b.perturb_blocks)}")
            if b.perturb_audio_blocks:
                extra.append(f"STG audio blocks {list(b.perturb_audio_blocks)}")
            if b.isolate_modalities:
                extra.append("a2v/v2a cross-attention off")
            lines.append(f"  - {b.name}: {b.cond} conditioning" + (f", {', '.join(extra)}" if extra else ""))
        return "\n".join(lines)

    # --- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "branches": [asdict(b) for b in self.branches], "rule": asdict(self.rule)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CFGPolicy":
        try:
            branches = tuple(_branch_from_dict(b) for b in data["branches"])
            rule = _rule_from_dict(dict(data["rule"]))
            return cls(name=str(data["name"]), branches=branches, rule=rule)
        except (KeyError, TypeError) as exc:
            raise PolicyError(f"Not a valid policy description ({exc!r}); build one with the CFGPolicy Builder.") from None

    @classmethod
    def from_json(cls, text: str) -> "CFGPolicy":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"Policy JSON does not parse: {exc}") from None
        return cls.from_dict(data)


def _branch_from_dict(d: Mapping[str, Any]) -> CFGBranch:
    d = dict(d)
    if "conds" in d:  # the field's name before 0.2
        d.setdefault("cond", d.pop("conds"))
    for key in ("perturb_blocks", "perturb_audio_blocks"):
        d[key] = tuple(d.get(key, ()))
    return CFGBranch(**d)


def _rule_from_dict(d: dict) -> Rule:
    kind = d.pop("kind", None)
    if kind == "standard":
        return StandardCFG(**d)
    if kind == "weighted":
        return WeightedBranches(weights=tuple((str(n), float(w)) for n, w in d["weights"]))
    if kind == "ltx_multimodal":
        return LTXMultimodal(video=_modality_from_dict(d["video"]), audio=_modality_from_dict(d["audio"]))
    raise PolicyError(f"Unknown combine rule {kind!r}: expected 'standard', 'weighted' or 'ltx_multimodal'.")


def _modality_from_dict(d: Mapping[str, Any]) -> ModalityGuidance:
    d = dict(d)
    d["stg_blocks"] = tuple(d.get("stg_blocks", ()))
    return ModalityGuidance(**d)
