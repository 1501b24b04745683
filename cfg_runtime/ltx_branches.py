"""Per-call branch options for the LTX models (worker-side model code).

The LTX guidance branches that are not plain conditionings are made by
``model_options`` alone, so that one loaded model serves every branch at the same
time (several threads, or several worker processes that receive the options by
pickle) without any shared state being changed:

* **perturbed pass (STG)**: in the chosen transformer blocks the *self*-attention
  returns its values instead of attending (attention output = V, so the module
  computes ``to_out(to_v(x))``; LTX-2 blocks: both the video and the audio
  self-attention). Text cross-attention and the audio<->video cross-attention
  are untouched.
* **modality-isolated pass** (LTX-2 audio+video only): the audio->video and
  video->audio cross-attention are switched off through the per-call keys
  ``a2v_cross_attn`` / ``v2a_cross_attn`` that ComfyUI's ``BasicAVTransformerBlock``
  reads from ``transformer_options``.

How the perturbed pass is hooked (same in ComfyUI 0.3.75 and 0.29)
------------------------------------------------------------------
The lightricks models never set ``transformer_options["block_index"]`` and read no
``attn1_replace``/``attn1_patch`` patches, but both versions honour

1. ``transformer_options["patches_replace"]["dit"][("double_block", i)]``: a callable
   that runs in place of block ``i`` and gets ``original_block``. It gives the exact
   block, per call. :class:`PerturbedBlock` is that callable; it runs the original
   block with a *copied* ``transformer_options`` that carries
2. ``transformer_options["optimized_attention_override"]``: every ComfyUI attention
   backend (``wrap_attn``) hands its call to it. The override lives for one block
   call only (a fresh :class:`_BlockAttention` per call, never shared), so nothing
   leaks to other blocks, other calls or other threads.

The override sees ``q, k, v`` but not which module called it. Self-attention is told
apart from cross-attention by the block's fixed call order, checked against the
token counts of the block's own input:

* LTX-Video block: the first attention call is the self-attention (``attn1``), the
  next one the text cross-attention (``attn2``).
* LTX-2 block: video self-attention, video text cross-attention, audio
  self-attention, audio text cross-attention, audio->video, video->audio (each
  part only when the block runs it: ``run_vx``/``run_ax``/empty audio).
* A self-attention may be split into several calls over slices of the queries that
  share the same ``k``/``v`` tensors (0.29's guide-attention mask); those calls are
  recognised by tensor identity and get the matching rows of ``v``.

Each call taken for a self-attention must have keys and values of exactly the
stream's token count and width; and when the block returns, every expected
self-attention must have been replaced. Otherwise a ``RuntimeError`` says that this
ComfyUI's LTX block does not look as expected: a perturbed pass is never silently
computed as an unperturbed one. An ``optimized_attention_override`` that was already
in the options (e.g. a sage-attention node) still handles every call that is not
replaced, and a ``dit`` replace patch already on a block is called in turn.

ComfyUI is imported lazily (nothing here needs it at import time).
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any, Iterable

__all__ = [
    "BRANCH_KEY",
    "LTXBranch",
    "PerturbedBlock",
    "branch_model_options",
    "branch_of",
    "check_blocks",
    "check_branch",
    "count_transformer_blocks",
    "model_family",
]

# transformer_options key that records which LTX branch a model_options describes
# (plain data; lets callers compare/batch branches without inspecting patches).
BRANCH_KEY = "cfg_parallel_ltx_branch"

_DIT_KEY = "double_block"


@dataclasses.dataclass(frozen=True)
class LTXBranch:
    """What :func:`branch_model_options` switched on (stored under ``BRANCH_KEY``)."""

    perturb_blocks: tuple[int, ...] = ()
    isolate_modalities: bool = False

    @property
    def is_plain(self) -> bool:
        return not self.perturb_blocks and not self.isolate_modalities


def _block_index(b) -> int:
    """An int block index (Python, numpy or torch integer), else ValueError."""
    if isinstance(b, bool):
        raise ValueError(f"STG block {b!r} is not an integer")
    try:
        return operator.index(b)
    except TypeError:
        raise ValueError(f"STG block {b!r} is not an integer") from None


def _normalise_blocks(blocks: Iterable[int]) -> tuple[int, ...]:
    if isinstance(blocks, (str, bytes)):
        raise ValueError(f"STG blocks must be integers, got {blocks!r}")
    out = set()
    for b in blocks:
        b = _block_index(b)
        if b < 0:
            raise ValueError(f"STG block {b} is out of range: block indices start at 0")
        out.add(b)
    return tuple(sorted(out))


def branch_of(model_options: dict) -> LTXBranch:
    """The LTX branch a ``model_options`` (made by :func:`branch_model_options`) runs."""
    to = (model_options or {}).get("transformer_options", {}) or {}
    br = to.get(BRANCH_KEY)
    return br if isinstance(br, LTXBranch) else LTXBranch()


def branch_model_options(
    model_options: dict,
    *,
    perturb_blocks: Iterable[int] = (),
    isolate_modalities: bool = False,
) -> dict:
    """A new ``model_options`` whose next forward runs the perturbed and/or the
    modality-isolated pass.

    ``perturb_blocks``: transformer blocks whose self-attention becomes value
    passthrough (validate them against the model with :func:`check_blocks`).
    ``isolate_modalities``: audio<->video cross-attention off (LTX-2 AV only; an
    LTX-Video model ignores the keys — see :func:`check_branch`).

    The input is never mutated: the dicts on the way to what changes
    (``transformer_options``, ``patches_replace``, ``patches_replace["dit"]``) are
    copied; everything else is shared. With no blocks and ``isolate_modalities``
    False the result is a shallow copy equal to the input. Everything added is
    picklable plain data.
    """
    blocks = _normalise_blocks(perturb_blocks)
    isolate = bool(isolate_modalities)
    out = dict(model_options or {})
    if not blocks and not isolate:
        return out

    to = dict(out.get("transformer_options") or {})
    if blocks:
        patches_replace = dict(to.get("patches_replace") or {})
        dit = dict(patches_replace.get("dit") or {})
        for b in blocks:
            key = (_DIT_KEY, b)
            previous = dit.get(key)
            if isinstance(previous, PerturbedBlock):
                continue  # already perturbed: wrapping twice would misread the calls
            dit[key] = PerturbedBlock(block=b, inner=previous)
        patches_replace["dit"] = dit
        to["patches_replace"] = patches_replace
    if isolate:
        to["a2v_cross_attn"] = False
        to["v2a_cross_attn"] = False

    before = to.get(BRANCH_KEY)
    before = before if isinstance(before, LTXBranch) else LTXBranch()
    to[BRANCH_KEY] = LTXBranch(
        perturb_blocks=tuple(sorted(set(before.perturb_blocks) | set(blocks))),
        isolate_modalities=before.isolate_modalities or isolate,
    )
    out["transformer_options"] = to
    return out


# --------------------------------------------------------------------------------------
# The per-block hook
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PerturbedBlock:
    """``patches_replace["dit"][("double_block", block)]``: runs the block with its
    self-attention replaced by value passthrough. Plain data, picklable; ``inner`` is
    a replace patch that was on this block before (called in turn) or None."""

    block: int
    inner: Any = None

    def __call__(self, args: dict, extra: dict) -> dict:
        to = args.get("transformer_options")
        to = to if to is not None else {}
        hook = _BlockAttention(self.block, _self_attention_plan(args["img"], to),
                               to.get("optimized_attention_override"))
        new_to = dict(to)
        new_to["optimized_attention_override"] = hook
        new_args = dict(args)
        new_args["transformer_options"] = new_to
        if self.inner is not None:
            out = self.inner(new_args, extra)
        else:
            out = extra["original_block"](new_args)
        hook.finish()
        return out


@dataclasses.dataclass
class _SelfSlot:
    stream: str   # "video" / "audio"
    tokens: int   # token count of the stream (keys/values of its self-attention)
    width: int    # hidden width of the stream (= heads * head_dim of its self-attention)


_OTHER = None  # an attention call of the block that is left alone


def _self_attention_plan(img, to: dict) -> list:
    """The block's attention calls in order, up to its last self-attention:
    a _SelfSlot where a self-attention starts, _OTHER for a call that is not one."""
    if isinstance(img, (tuple, list)):  # LTX-2 BasicAVTransformerBlock: (vx, ax)
        vx, ax = img[0], img[1]
        run_vx = bool(to.get("run_vx", True))
        run_ax = bool(to.get("run_ax", True)) and ax.numel() > 0
        plan: list = []
        if run_vx:
            plan += [_SelfSlot("video", vx.shape[1], vx.shape[-1]), _OTHER]  # attn1, attn2
        if run_ax:
            plan += [_SelfSlot("audio", ax.shape[1], ax.shape[-1])]  # audio_attn1
        return plan
    # LTX-Video BasicTransformerBlock: attn1 (self) then attn2 (text)
    return [_SelfSlot("video", img.shape[1], img.shape[-1])]


class _BlockAttention:
    """optimized_attention_override for one call of one perturbed block (per call,
    never shared: it counts the block's attention calls)."""

    def __init__(self, block: int, plan: list, previous):
        self.block = block
        self.plan = list(plan)
        self.previous = previous
        self.calls = 0
        self.replaced: list[str] = []
        self._group = None      # (slot, k, v) of the self-attention being replaced
        self._rows = 0          # query rows of that self-attention covered so far

    # -- helpers -------------------------------------------------------------------
    def _fail(self, what: str):
        raise RuntimeError(
            f"STG (perturbed pass) on transformer block {self.block}: {what}. This "
            "ComfyUI's LTX transformer block does not call its attention in the "
            "expected order (self-attention first), so the perturbed pass cannot be "
            "applied safely; please report the ComfyUI version.")

    def _close_group(self):
        if self._group is not None:
            slot = self._group[0]
            if self._rows != slot.tokens:
                self._fail(f"the {slot.stream} self-attention covered {self._rows} of "
                           f"{slot.tokens} query rows")
            self._group = None

    def _delegate(self, func, args, kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    # -- the override ----------------------------------------------------------------
    def __call__(self, func, *args, **kwargs):
        self.calls += 1
        q, k, v = _qkv(args, kwargs)
        skip_reshape = bool(kwargs.get("skip_reshape", False))
        seq = 2 if skip_reshape else 1

        if self._group is not None and k is self._group[1] and v is self._group[2]:
            slot = self._group[0]  # one more query slice of the same self-attention
        else:
            self._close_group()
            slot = self.plan.pop(0) if self.plan else _OTHER
            if slot is _OTHER:
                return self._delegate(func, args, kwargs)
            if skip_reshape:
                q_width = q.shape[1] * q.shape[3]
                v_width = v.shape[1] * v.shape[3]
            else:
                q_width, v_width = q.shape[-1], v.shape[-1]
            if (k.shape[seq] != slot.tokens or v.shape[seq] != slot.tokens
                    or q_width != slot.width or v_width != slot.width):
                self._fail(
                    f"the attention call taken for the {slot.stream} self-attention has "
                    f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; expected "
                    f"{slot.tokens} key/value tokens of width {slot.width}")
            self._group = (slot, k, v)
            self._rows = 0
            self.replaced.append(slot.stream)

        n = q.shape[seq]
        start = self._rows
        if start + n > slot.tokens:
            self._fail(f"the {slot.stream} self-attention has more query rows than tokens")
        self._rows = start + n
        return _value_passthrough(v, start, n, args[3] if len(args) > 3 else kwargs["heads"],
                                  skip_reshape, bool(kwargs.get("skip_output_reshape", False)))

    def finish(self):
        self._close_group()
        missing = [s.stream for s in self.plan if s is not _OTHER]
        if missing:
            self._fail("the " + " and ".join(missing) + " self-attention was never called "
                       f"(the block made {self.calls} attention calls)")


def _qkv(args, kwargs):
    names = ("q", "k", "v")
    vals = list(args[:3])
    for name in names[len(vals):]:
        # the backends name them q/k/v (attention_sub_quad: query/key/value)
        alt = {"q": "query", "k": "key", "v": "value"}[name]
        vals.append(kwargs[name] if name in kwargs else kwargs[alt])
    return vals


def _value_passthrough(v, start: int, n: int, heads: int, skip_reshape: bool,
                       skip_output_reshape: bool):
    """Attention output = V (rows start..start+n), in the layout the backend returns."""
    if skip_reshape:  # v: [B, H, L, D]
        rows = v if (start == 0 and n == v.shape[2]) else v[:, :, start:start + n]
        if skip_output_reshape:
            return rows
        b, h, l, d = rows.shape
        return rows.transpose(1, 2).reshape(b, l, h * d)
    rows = v if (start == 0 and n == v.shape[1]) else v[:, start:start + n]
    if skip_output_reshape:  # backend would return [B, H, L, D]
        b, l, hd = rows.shape
        return rows.reshape(b, l, heads, hd // heads).transpose(1, 2)
    return rows


# --------------------------------------------------------------------------------------
# Model inspection
# --------------------------------------------------------------------------------------

def _diffusion_model(model):
    """The diffusion model (nn.Module) of a ModelPatcher, a BaseModel or itself."""
    m = model
    inner = getattr(m, "model", None)          # ModelPatcher -> BaseModel
    if inner is not None and hasattr(inner, "diffusion_model"):
        m = inner
    dm = getattr(m, "diffusion_model", None)   # BaseModel -> diffusion model
    if dm is not None:
        m = dm
    return getattr(m, "_orig_mod", m)          # torch.compile wrapper


def model_family(model) -> str:
    """"ltxav" (LTX-2 audio+video), "ltxv" (LTX-Video) or "other"."""
    dm = _diffusion_model(model)
    for cls in type(dm).__mro__:
        if not cls.__module__.startswith("comfy.ldm.lightricks"):
            continue
        if cls.__name__ == "LTXAVModel":
            return "ltxav"
        if cls.__name__ == "LTXVModel":
            return "ltxv"
    return "other"


def count_transformer_blocks(model) -> int:
    """Number of transformer blocks of a model (ModelPatcher, BaseModel or module)."""
    dm = _diffusion_model(model)
    blocks = getattr(dm, "transformer_blocks", None)
    if blocks is None:
        raise ValueError(f"{type(dm).__name__} has no transformer_blocks")
    return len(blocks)


def check_blocks(model, blocks: Iterable[int]) -> tuple[int, ...]:
    """Validate STG blocks for a model; returns them sorted and de-duplicated.

    Raises ValueError for a model that is not an LTX model and for a block out of
    range, e.g. "STG block 31 is out of range: this model has 28 transformer blocks
    (0-27)".
    """
    family = model_family(model)
    if family == "other":
        raise ValueError(
            "STG (the perturbed pass) needs an LTX model (LTX-Video or LTX-2); this "
            f"model is {type(_diffusion_model(model)).__name__}")
    n = count_transformer_blocks(model)
    out = []
    if isinstance(blocks, (str, bytes)):
        raise ValueError(f"STG blocks must be integers, got {blocks!r}")
    for b in blocks:
        b = _block_index(b)
        if not 0 <= b < n:
            raise ValueError(f"STG block {b} is out of range: this model has {n} "
                             f"transformer blocks (0-{n - 1})")
        out.append(b)
    return tuple(sorted(set(out)))


def check_branch(model, *, perturb_blocks: Iterable[int] = (),
                 isolate_modalities: bool = False) -> None:
    """Validate a branch for a model before sampling (ValueError with the reason)."""
    if perturb_blocks:
        check_blocks(model, perturb_blocks)
    if isolate_modalities and model_family(model) != "ltxav":
        raise ValueError(
            "the modality-isolated pass needs an LTX-2 audio+video model; this model is "
            f"{model_family(model)!r} ({type(_diffusion_model(model)).__name__})")
