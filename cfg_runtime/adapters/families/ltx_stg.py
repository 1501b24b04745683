"""The STG hook: the perturbed pass run inside chosen LTX blocks, per call.

How the perturbed pass is hooked (same in ComfyUI 0.3.75 and 0.29)
------------------------------------------------------------------
The lightricks models never set ``transformer_options["block_index"]`` and read no
``attn1_replace``/``attn1_patch`` patches, but both versions honour
``transformer_options["patches_replace"]["dit"][("double_block", i)]``: a callable
that runs in place of block ``i`` and gets ``original_block`` (ComfyUI's wrapper that
calls block ``i`` with the patch's arguments). :class:`PerturbedBlock` is that
callable. It runs block ``i`` one of two ways:

1. **Direct route** (used whenever it applies): ``original_block`` is a closure over
   the block module. The patch calls that same function over a per-call *view* of the
   block (a new module object sharing every parameter and sub-module of the block,
   except that the perturbed self-attention modules are :class:`_ValuePassthrough`),
   so ComfyUI's own argument mapping is kept. The passthrough computes only
   ``to_v`` (and the gate) and ``to_out``: no queries, no keys, no attention. The view
   lives for one call; the model itself is never changed.
2. **Override route** (when ``original_block`` is not such a closure, e.g. another
   node's patch wraps it): the block runs as is with a per-call
   ``transformer_options["optimized_attention_override"]`` that returns V for the
   perturbed self-attention calls (queries and keys are computed and not used). The
   override sees ``q, k, v`` but not which module called it: self-attention is told
   apart by the block's fixed call order (LTX-Video: ``attn1``, ``attn2``; LTX-2:
   video self, video text, audio self, audio text, audio->video, video->audio, each
   only when the block runs it), checked against the stream's token count and width;
   a self-attention split into query slices that share ``k``/``v`` (0.29's guide
   mask) gets the matching rows of ``v``.

Both routes give the same bits. Either way, when the block returns, every perturbed
self-attention of a stream that ran must have been replaced, otherwise a
``RuntimeError`` says that this ComfyUI's LTX block does not look as expected: a
perturbed pass is never silently computed as an unperturbed one. An
``optimized_attention_override`` already in the options (e.g. a sage-attention node)
still handles every attention call that is not replaced, and a ``dit`` replace patch
already on a block is called in turn.

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Optional

import torch

STREAMS = ("video", "audio")
# the self-attention module of each stream in ComfyUI's LTX blocks
_SELF_ATTENTION = {"video": "attn1", "audio": "audio_attn1"}


@dataclasses.dataclass(frozen=True)
class PerturbedBlock:
    """``patches_replace["dit"][("double_block", block)]``: runs the block with the
    self-attention of each stream in ``streams`` ("video", "audio") replaced by value
    passthrough. Plain data, picklable; ``inner`` is a replace patch that was on this
    block before (called in turn) or None. ``via_override`` forces the override route
    (queries and keys computed and dropped; for comparisons and measurements)."""

    block: int
    streams: tuple[str, ...] = STREAMS
    inner: Any = None
    via_override: bool = False

    def __post_init__(self) -> None:
        bad = [s for s in self.streams if s not in STREAMS]
        if bad or not self.streams:
            raise ValueError(f"PerturbedBlock streams must be a non-empty subset of {STREAMS}, got {self.streams!r}")

    def __call__(self, args: dict, extra: dict) -> dict:
        to = args.get("transformer_options")
        to = to if to is not None else {}
        slots = _self_attention_plan(args["img"], to, self.streams)
        original = extra["original_block"]
        direct = None if self.via_override else _DirectRoute.of(original, self.block, self.streams)
        if direct is not None:
            run, new_args, hook = direct, args, None
        else:
            hook = _BlockAttention(self.block, slots, to.get("optimized_attention_override"))
            new_to = dict(to)
            new_to["optimized_attention_override"] = hook
            run, new_args = original, dict(args, transformer_options=new_to)
        if self.inner is not None:
            out = self.inner(new_args, dict(extra, original_block=run))
        else:
            out = run(new_args)
        if hook is not None:
            hook.finish()
        else:
            direct.finish({s.stream for s in slots if s is not _OTHER})
        return out


# --- direct route: a per-call view of the block with passthrough self-attention -----------

class _ValuePassthrough:
    """Stands in for one self-attention module for one block call: attention output = V,
    so the result is ``to_out(gate * to_v(x))``; ``to_q``/``to_k`` never run."""

    def __init__(self, attn, fail: Callable[[str], None], stream: str) -> None:
        self.attn = attn
        self.fail = fail
        self.stream = stream
        self.calls = 0

    def __call__(self, x, context=None, mask=None, pe=None, k_pe=None, transformer_options=None):
        if context is not None or k_pe is not None:
            self.fail(f"the {self.stream} self-attention module was called with a context (a cross-attention)")
        self.calls += 1
        a = self.attn
        out = a.to_v(x)
        gate = getattr(a, "to_gate_logits", None)
        if gate is not None:  # LTX-2.3 per-head output gate, applied to the attention output
            b, t, _ = out.shape
            gates = 2.0 * torch.sigmoid(gate(x))
            out = (out.view(b, t, a.heads, a.dim_head) * gates.unsqueeze(-1)).view(b, t, a.heads * a.dim_head)
        return a.to_out(out)


class _DirectRoute:
    """``original_block`` rebound to a per-call view of the block (see the module doc)."""

    def __init__(self, fn: Callable, passthrough: list[_ValuePassthrough], fail: Callable[[str], None]) -> None:
        self.fn = fn
        self.passthrough = passthrough
        self.fail = fail

    def __call__(self, args: dict) -> dict:
        return self.fn(args)

    @classmethod
    def of(cls, original: Callable, block: int, streams: tuple[str, ...]) -> Optional["_DirectRoute"]:
        """The direct route for ``original``, or None when it is not a closure over one LTX block."""
        code = getattr(original, "__code__", None)
        cells = getattr(original, "__closure__", None)
        if code is None or not cells:
            return None
        found = [i for i, c in enumerate(cells) if _is_ltx_block(_cell_contents(c))]
        if len(found) != 1:
            return None
        module = cells[found[0]].cell_contents
        fail = _failer(block)
        replaced = {}
        for stream in streams:
            name = _SELF_ATTENTION[stream]
            attn = module._modules.get(name)
            if attn is None:
                if stream == "video":
                    return None  # a block without attn1: leave it to the override route's checks
                continue  # an LTX-Video block has no audio stream: nothing to perturb there
            if not all(hasattr(attn, a) for a in ("to_v", "to_out", "heads", "dim_head")):
                return None
            replaced[name] = _ValuePassthrough(attn, fail, stream)
        view = object.__new__(type(module))
        view.__dict__.update(module.__dict__)
        view.__dict__["_modules"] = {**module._modules, **replaced}
        new_cells = tuple(types.CellType(view) if i == found[0] else c for i, c in enumerate(cells))
        fn = types.FunctionType(code, original.__globals__, original.__name__, original.__defaults__, new_cells)
        fn.__kwdefaults__ = original.__kwdefaults__
        return cls(fn, list(replaced.values()), fail)

    def finish(self, expected: set[str]) -> None:
        missing = [p.stream for p in self.passthrough if p.stream in expected and p.calls == 0]
        if missing:
            self.fail("the " + " and ".join(missing) + " self-attention was never called")


def _cell_contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _is_ltx_block(obj) -> bool:
    return (isinstance(obj, torch.nn.Module) and type(obj).__module__.startswith("comfy.ldm.lightricks")
            and "attn1" in obj._modules)


def _failer(block: int) -> Callable[[str], None]:
    def fail(what: str) -> None:
        raise RuntimeError(
            f"STG (perturbed pass) on transformer block {block}: {what}. This ComfyUI's LTX transformer block "
            "does not call its attention in the expected way (self-attention first), so the perturbed pass "
            "cannot be applied safely; please report the ComfyUI version.")
    return fail


# --- override route --------------------------------------------------------------------------

@dataclasses.dataclass
class _SelfSlot:
    stream: str   # "video" / "audio"
    tokens: int   # token count of the stream (keys/values of its self-attention)
    width: int    # hidden width of the stream (= heads * head_dim of its self-attention)


_OTHER = None  # an attention call of the block that is left alone


def _self_attention_plan(img, to: dict, streams: tuple[str, ...] = STREAMS) -> list:
    """The block's attention calls in order, up to its last perturbed self-attention:
    a _SelfSlot where a perturbed self-attention starts, _OTHER for a call left alone."""
    if isinstance(img, (tuple, list)):  # LTX-2 BasicAVTransformerBlock: (vx, ax)
        vx, ax = img[0], img[1]
        run_vx = bool(to.get("run_vx", True))
        run_ax = bool(to.get("run_ax", True)) and ax.numel() > 0
        plan: list = []
        if run_vx:  # attn1 (self), attn2 (text)
            plan += [_SelfSlot("video", vx.shape[1], vx.shape[-1]) if "video" in streams else _OTHER, _OTHER]
        if run_ax and "audio" in streams:
            plan += [_SelfSlot("audio", ax.shape[1], ax.shape[-1])]  # audio_attn1
        while plan and plan[-1] is _OTHER:
            plan.pop()
        return plan
    # LTX-Video BasicTransformerBlock: attn1 (self) then attn2 (text); no audio stream
    return [_SelfSlot("video", img.shape[1], img.shape[-1])] if "video" in streams else []


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
        self._fail = _failer(block)

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
