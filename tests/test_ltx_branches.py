"""Per-call LTX branch options (cfg_runtime/ltx_branches.py) on tiny real LTX models.

By default the tests import ComfyUI 0.3.75 from ``.cache/comfyui`` (made by
``scripts/setup_env.sh``) and run on its LTX-Video model. The LTX-2 audio+video part
needs ComfyUI 0.29 and is skipped unless ``COMFYUI_029_DIR`` names its folder; then
*every* ComfyUI test in this file runs against that ComfyUI instead (LTX-Video of
0.29 included), so run it with a Python that can import it, e.g.::

    COMFYUI_DIR=/tmp/comfy029 COMFYUI_029_DIR=/tmp/comfy029 \
        /tmp/venv029/bin/python -m pytest tests/test_ltx_branches.py -q

(``COMFYUI_DIR`` too, because tests/conftest.py imports the suite's ComfyUI before this
file runs.) Two ComfyUIs cannot live in one process: if another ComfyUI is already
imported the ComfyUI tests skip and say so. Reference results are computed by hand, IN THE TESTS
ONLY, by replacing the chosen blocks' self-attention module of a copy of the model
with a module that returns ``to_out(to_v(x))``, in the intended stream only (video
``attn1``, audio ``audio_attn1``). Both routes of the hook are checked: the direct route
(what runs: hook hits per block, module and projection show that the perturbed
self-attention computes ``to_v`` and ``to_out`` only) and the override route (the module
runs, its attention call answered by V), which must give the same bits.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import json
import os
import pickle
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cfg_runtime.adapters.families import ltx_options as lb  # noqa: E402  (must import without ComfyUI)

COMFY_029 = os.environ.get("COMFYUI_029_DIR")
# The suite's ComfyUI (tests/support/paths.py: COMFYUI_DIR, default .cache/comfyui),
# unless COMFYUI_029_DIR names another one for this file.
COMFY_DIR = Path(COMFY_029 or os.environ.get("COMFYUI_DIR")
                 or REPO / ".cache" / "comfyui").resolve()

needs_029 = pytest.mark.skipif(
    not COMFY_029,
    reason="[needs ComfyUI 0.29] LTX-2 audio+video tests need ComfyUI 0.29 (comfy/ldm/lightricks/av_model.py): "
           "set COMFYUI_029_DIR to its folder and run with a Python that can import it",
)

LTXV_CFG = dict(in_channels=128, cross_attention_dim=32, attention_head_dim=16,
                num_attention_heads=2, caption_channels=32, num_layers=3)
LTXAV_CFG = dict(in_channels=128, audio_in_channels=128, cross_attention_dim=32,
                 audio_cross_attention_dim=16, attention_head_dim=16, audio_attention_head_dim=8,
                 num_attention_heads=2, audio_num_attention_heads=2, caption_channels=32,
                 num_layers=3, connector_attention_head_dim=8, connector_num_attention_heads=2,
                 connector_num_layers=1)


# --------------------------------------------------------------------------------------
# ComfyUI import and tiny models
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfy():
    if not (COMFY_DIR / "comfy").is_dir():
        pytest.skip(f"no ComfyUI at {COMFY_DIR} (run scripts/setup_env.sh, or set COMFYUI_029_DIR)")
    loaded = sys.modules.get("comfy")
    if loaded is not None:
        paths = {Path(p).resolve() for p in getattr(loaded, "__path__", [])}
        if (COMFY_DIR / "comfy").resolve() not in paths:
            pytest.skip(f"another ComfyUI ({sorted(map(str, paths))}) is already imported in "
                        f"this process (tests/conftest.py imports COMFYUI_DIR); {COMFY_DIR} "
                        "cannot be imported beside it: set COMFYUI_DIR to the same folder")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.ldm.lightricks.model  # noqa: F401
    import comfy.ops  # noqa: F401
    return comfy


def _init(dm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dm.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return dm.eval()


@pytest.fixture(scope="module")
def ltxv(comfy):
    dm = comfy.ldm.lightricks.model.LTXVModel(**LTXV_CFG, operations=comfy.ops.disable_weight_init)
    return _init(dm)


@pytest.fixture(scope="module")
def ltxv_inputs():
    g = torch.Generator().manual_seed(123)
    return dict(x=torch.randn(1, 128, 2, 2, 2, generator=g), timestep=torch.tensor([0.5]),
                context=torch.randn(1, 8, 32, generator=g), attention_mask=torch.ones(1, 8))


def run_ltxv(dm, inputs, model_options=None):
    to = (model_options or {}).get("transformer_options", {})
    with torch.no_grad():
        return dm(inputs["x"].clone(), inputs["timestep"], inputs["context"],
                  inputs["attention_mask"], transformer_options=to)


class _RefValuePassthrough(torch.nn.Module):
    """TEST ONLY: stands in for a self-attention module; output = to_out(to_v(x)), with
    the module's per-head output gate in between where it has one (LTX-2.3), as in
    ltx-core's Attention with all_perturbed=True."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, context=None, mask=None, pe=None, k_pe=None, transformer_options={}):
        assert context is None
        return _passthrough_of(self.attn, x, x)


def _passthrough_of(a, x, src):
    """What attention module ``a`` returns if its attention output is V (of ``src``)."""
    out = a.to_v(src)
    if getattr(a, "to_gate_logits", None) is not None:
        b, t, _ = out.shape
        gates = 2.0 * torch.sigmoid(a.to_gate_logits(x))
        out = (out.view(b, t, a.heads, a.dim_head) * gates.unsqueeze(-1)).view(b, t, -1)
    return a.to_out(out)


def reference_model(dm, blocks, names=("attn1",)):
    ref = copy.deepcopy(dm)
    for b in blocks:
        for name in names:
            block = ref.transformer_blocks[b]
            setattr(block, name, _RefValuePassthrough(getattr(block, name)))
    return ref


class AttnRecorder:
    """TEST ONLY: forward hooks on every attention module of the blocks and on its
    projections. ``calls`` counts module calls per (block, module); ``passthrough`` the
    calls that returned exactly to_out(to_v(source)) (override route: the module runs);
    ``proj`` counts projection calls per (block, module, "to_q"/"to_k"/"to_v"/"to_out")
    (also what the direct route runs: it never calls the module, nor to_q / to_k)."""

    PROJ = ("to_q", "to_k", "to_v", "to_out")

    def __init__(self, dm):
        self.calls = collections.Counter()
        self.passthrough = collections.Counter()
        self.proj = collections.Counter()
        self.handles = []
        for i, block in enumerate(dm.transformer_blocks):
            for name, mod in block.named_children():
                if type(mod).__name__ == "CrossAttention":
                    self.handles.append(mod.register_forward_hook(
                        self._hook(i, name), with_kwargs=True))
                    for p in self.PROJ:
                        self.handles.append(getattr(mod, p).register_forward_hook(self._count(i, name, p)))

    def _count(self, i, name, p):
        def hook(mod, args, output):
            self.proj[(i, name, p)] += 1
        return hook

    def _hook(self, i, name):
        def hook(mod, args, kwargs, output):
            x = args[0] if args else kwargs["x"]
            context = kwargs.get("context")
            src = x if context is None else context
            self.calls[(i, name)] += 1
            if src.shape[1] != x.shape[1]:
                return  # a cross-attention whose V cannot even stand in for its output
            with torch.no_grad():
                ref = _passthrough_of(mod, x, src)
            if ref.shape == output.shape and torch.equal(ref, output):
                self.passthrough[(i, name)] += 1
        return hook

    def replaced(self):
        """(block, module) whose queries and keys were not computed but whose values were."""
        return {(i, n) for (i, n, p), c in self.proj.items() if p == "to_v" and c
                and not self.proj[(i, n, "to_q")] and not self.proj[(i, n, "to_k")]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def via_override(model_options):
    """The same options with every PerturbedBlock forced onto the override route."""
    to = dict(model_options["transformer_options"])
    to["patches_replace"] = dict(to["patches_replace"])
    to["patches_replace"]["dit"] = {
        key: dataclasses.replace(patch, via_override=True) if isinstance(patch, lb.PerturbedBlock) else patch
        for key, patch in to["patches_replace"]["dit"].items()}
    return dict(model_options, transformer_options=to)


class CountingOverride:
    """An optimized_attention_override that was already in the options: counts the
    calls handed to it and runs the attention."""

    def __init__(self):
        self.calls = 0

    def __call__(self, func, *args, **kwargs):
        self.calls += 1
        return func(*args, **kwargs)


class CountingDitPatch:
    """A patches_replace["dit"] entry that was already in the options."""

    def __init__(self):
        self.calls = 0

    def __call__(self, args, extra):
        self.calls += 1
        return extra["original_block"](args)


# --------------------------------------------------------------------------------------
# The options object (no ComfyUI needed)
# --------------------------------------------------------------------------------------

def test_plain_branch_is_an_equal_copy():
    mo = {"transformer_options": {"patches_replace": {"dit": {}}, "x": 1}, "sampler_cfg_function": None}
    out = lb.branch_model_options(mo)
    assert out == mo and out is not mo
    assert lb.branch_model_options({}, perturb_blocks=(), isolate_modalities=False) == {}
    assert lb.branch_of(out).is_plain


def test_input_is_never_mutated():
    prev_dit = CountingDitPatch()
    prev_override = CountingOverride()
    dit = {("double_block", 0): prev_dit}
    patches_replace = {"dit": dit, "other": {"k": 1}}
    to = {"patches_replace": patches_replace, "optimized_attention_override": prev_override}
    mo = {"transformer_options": to, "keep": [1, 2]}
    snapshot = (dict(mo), dict(to), dict(patches_replace), dict(dit))
    out = lb.branch_model_options(mo, perturb_blocks=(0, 2), isolate_modalities=True)
    assert (dict(mo), dict(to), dict(patches_replace), dict(dit)) == snapshot
    assert set(dit) == {("double_block", 0)} and "a2v_cross_attn" not in to
    new_to = out["transformer_options"]
    assert new_to is not to and new_to["patches_replace"] is not patches_replace
    assert new_to["patches_replace"]["other"] is patches_replace["other"]  # untouched: shared
    new_dit = new_to["patches_replace"]["dit"]
    assert new_dit[("double_block", 0)] == lb.PerturbedBlock(0, ("video",), inner=prev_dit)
    assert new_dit[("double_block", 2)] == lb.PerturbedBlock(2, ("video",))
    assert new_to["a2v_cross_attn"] is False and new_to["v2a_cross_attn"] is False
    assert new_to["optimized_attention_override"] is prev_override
    assert out["keep"] is mo["keep"]


def test_branches_compose_and_are_not_wrapped_twice():
    a = lb.branch_model_options({}, perturb_blocks=(1,))
    b = lb.branch_model_options(a, perturb_blocks=(1, 2), isolate_modalities=True)
    dit = b["transformer_options"]["patches_replace"]["dit"]
    assert dit[("double_block", 1)] == lb.PerturbedBlock(1, ("video",))  # not PerturbedBlock(1, inner=...)
    assert lb.branch_of(b) == lb.LTXBranch(perturb_blocks=(1, 2), isolate_modalities=True)
    assert lb.branch_of(a) == lb.LTXBranch(perturb_blocks=(1,))
    c = lb.branch_model_options(a, perturb_audio_blocks=(1, 3))  # audio on a video block: one patch, both streams
    dit = c["transformer_options"]["patches_replace"]["dit"]
    assert dit == {("double_block", 1): lb.PerturbedBlock(1, ("video", "audio")),
                   ("double_block", 3): lb.PerturbedBlock(3, ("audio",))}
    assert lb.branch_of(c) == lb.LTXBranch(perturb_blocks=(1,), perturb_audio_blocks=(1, 3))
    d = lb.branch_model_options({}, perturb_blocks=(0, 2), perturb_audio_blocks=(2, 1))
    assert {k[1]: v.streams for k, v in d["transformer_options"]["patches_replace"]["dit"].items()} == \
        {0: ("video",), 1: ("audio",), 2: ("video", "audio")}
    with pytest.raises(ValueError, match="streams"):
        lb.PerturbedBlock(0, ("text",))


def test_options_pickle_round_trip():
    mo = lb.branch_model_options({"transformer_options": {"foo": "bar"}},
                                 perturb_blocks=[3, 1, 3], isolate_modalities=True)
    back = pickle.loads(pickle.dumps(mo))
    assert back == mo
    assert copy.deepcopy(mo) == mo  # ModelPatcher.clone() deep-copies model_options
    assert lb.branch_of(back).perturb_blocks == (1, 3)


@pytest.mark.parametrize("bad", [(-1,), (1.5,), ("1",), (True,), "12"])
def test_bad_block_values(bad):
    with pytest.raises(ValueError):
        lb.branch_model_options({}, perturb_blocks=bad)
    with pytest.raises(ValueError):
        lb.branch_model_options({}, perturb_audio_blocks=bad)


def test_numpy_like_integers_are_accepted():
    assert lb.branch_of(lb.branch_model_options({}, perturb_blocks=(torch.tensor(2),))).perturb_blocks == (2,)


def _fake_block_call(plan_calls, img):
    """Run a PerturbedBlock around a fake block that makes the given attention calls."""
    def original_block(args):
        override = args["transformer_options"]["optimized_attention_override"]
        for q, k, v in plan_calls:
            override(lambda *a, **kw: torch.zeros_like(a[0]), q, k, v, 2,
                     transformer_options=args["transformer_options"])
        return {"img": args["img"]}
    return lb.PerturbedBlock(0)({"img": img, "transformer_options": {}}, {"original_block": original_block})


def test_unexpected_attention_layout_fails_loudly():
    x = torch.zeros(1, 6, 8)
    text = torch.zeros(1, 4, 8)
    # ok: self-attention (6 tokens) then cross-attention (4 text tokens)
    _fake_block_call([(x, x, x), (x, text, text)], x)
    # first call is not a 6-token self-attention -> refuse
    with pytest.raises(RuntimeError, match="self-attention"):
        _fake_block_call([(x, text, text), (x, x, x)], x)
    # the block never called its attention -> refuse
    with pytest.raises(RuntimeError, match="never called"):
        _fake_block_call([], x)


# --------------------------------------------------------------------------------------
# LTX-Video (ComfyUI 0.3.75, or 0.29 with COMFYUI_029_DIR)
# --------------------------------------------------------------------------------------

def test_model_family_and_block_count(comfy, ltxv):
    assert lb.model_family(ltxv) == "ltxv"
    assert lb.count_transformer_blocks(ltxv) == 3
    assert lb.model_family(torch.nn.Linear(2, 2)) == "other"


def test_perturbed_pass_replaces_only_that_blocks_self_attention(comfy, ltxv, ltxv_inputs):
    counter = CountingOverride()
    base = {"transformer_options": {"optimized_attention_override": counter}}
    with AttnRecorder(ltxv) as rec:
        cond = run_ltxv(ltxv, ltxv_inputs, base)
    assert counter.calls == 6 and sum(rec.calls.values()) == 6
    assert not rec.passthrough

    counter.calls = 0
    mo = lb.branch_model_options(base, perturb_blocks=(1,))
    with AttnRecorder(ltxv) as rec:
        ptb = run_ltxv(ltxv, ltxv_inputs, mo)
    assert not torch.equal(cond, ptb)
    assert (cond - ptb).abs().max() > 1e-6
    # direct route: the self-attention of block 1 computes V (and to_out) only, nothing else changes
    assert rec.replaced() == {(1, "attn1")}
    assert rec.proj[(1, "attn1", "to_v")] == rec.proj[(1, "attn1", "to_out")] == 1
    assert set(rec.calls) == {(i, n) for i in range(3) for n in ("attn1", "attn2")} - {(1, "attn1")}
    assert all(n == 1 for n in rec.calls.values()) and not rec.passthrough
    assert counter.calls == 5  # every other attention call still reaches the old override

    counter.calls = 0
    with AttnRecorder(ltxv) as rec:  # override route: same bits, q and k computed and dropped
        ptb_override = run_ltxv(ltxv, ltxv_inputs, via_override(mo))
    assert torch.equal(ptb_override, ptb)
    assert rec.passthrough == {(1, "attn1"): 1} and not rec.replaced()
    assert all(n == 1 for n in rec.calls.values()) and len(rec.calls) == 6
    assert counter.calls == 5


def test_empty_blocks_equal_cond_bit_for_bit(comfy, ltxv, ltxv_inputs):
    cond = run_ltxv(ltxv, ltxv_inputs)
    same = run_ltxv(ltxv, ltxv_inputs, lb.branch_model_options({}, perturb_blocks=()))
    assert torch.equal(cond, same)


@pytest.mark.parametrize("blocks", [(0,), (1,), (2,), (0, 2)])
def test_perturbed_pass_equals_hand_reference(comfy, ltxv, ltxv_inputs, blocks):
    mo = lb.branch_model_options({}, perturb_blocks=blocks)
    ptb = run_ltxv(ltxv, ltxv_inputs, mo)
    ref = run_ltxv(reference_model(ltxv, blocks), ltxv_inputs)
    assert torch.equal(ptb, ref)
    assert torch.equal(run_ltxv(ltxv, ltxv_inputs, via_override(mo)), ref)
    # audio blocks on a video-only model perturb nothing
    assert torch.equal(run_ltxv(ltxv, ltxv_inputs, lb.branch_model_options({}, perturb_audio_blocks=blocks)),
                       run_ltxv(ltxv, ltxv_inputs))


def test_pickled_options_still_work(comfy, ltxv, ltxv_inputs):
    mo = lb.branch_model_options({}, perturb_blocks=(1,))
    back = pickle.loads(pickle.dumps(mo))
    assert torch.equal(run_ltxv(ltxv, ltxv_inputs, back), run_ltxv(ltxv, ltxv_inputs, mo))
    assert torch.equal(run_ltxv(ltxv, ltxv_inputs, back),
                       run_ltxv(reference_model(ltxv, (1,)), ltxv_inputs))


def test_no_state_leaks_between_calls(comfy, ltxv, ltxv_inputs):
    ptb_opts = lb.branch_model_options({}, perturb_blocks=(0, 1, 2))
    c1 = run_ltxv(ltxv, ltxv_inputs)
    p1 = run_ltxv(ltxv, ltxv_inputs, ptb_opts)
    c2 = run_ltxv(ltxv, ltxv_inputs)
    p2 = run_ltxv(ltxv, ltxv_inputs, ptb_opts)
    assert torch.equal(c1, c2) and torch.equal(p1, p2) and not torch.equal(c1, p1)


def test_concurrent_threads_do_not_interfere(comfy, ltxv, ltxv_inputs):
    ptb_opts = lb.branch_model_options({}, perturb_blocks=(1,))
    want = {"cond": run_ltxv(ltxv, ltxv_inputs), "ptb": run_ltxv(ltxv, ltxv_inputs, ptb_opts)}
    errors = []

    def work(kind):
        try:
            for _ in range(20):
                got = run_ltxv(ltxv, ltxv_inputs, ptb_opts if kind == "ptb" else None)
                if not torch.equal(got, want[kind]):
                    errors.append(kind)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in ("cond", "ptb", "cond", "ptb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_existing_dit_patch_is_still_called(comfy, ltxv, ltxv_inputs):
    prev = CountingDitPatch()
    base = {"transformer_options": {"patches_replace": {"dit": {("double_block", 1): prev}}}}
    ptb = run_ltxv(ltxv, ltxv_inputs, lb.branch_model_options(base, perturb_blocks=(1,)))
    assert prev.calls == 1
    assert torch.equal(ptb, run_ltxv(reference_model(ltxv, (1,)), ltxv_inputs))


def test_out_of_range_blocks(comfy, ltxv):
    assert lb.check_blocks(ltxv, (2, 0, 2)) == (0, 2)
    with pytest.raises(ValueError, match=r"^STG block 3 is out of range: this model has 3 "
                                         r"transformer blocks \(0-2\)$"):
        lb.check_blocks(ltxv, (1, 3))
    with pytest.raises(ValueError, match="out of range"):
        lb.check_blocks(ltxv, (-1,))
    with pytest.raises(ValueError, match="not an integer"):
        lb.check_blocks(ltxv, (1.0,))
    with pytest.raises(ValueError, match="needs an LTX model"):
        lb.check_blocks(torch.nn.Linear(2, 2), (0,))
    big = comfy.ldm.lightricks.model.LTXVModel(**{**LTXV_CFG, "num_layers": 28},
                                               operations=comfy.ops.disable_weight_init)
    with pytest.raises(ValueError) as e:
        lb.check_blocks(big, (28, 31))
    assert str(e.value) == "STG block 28 is out of range: this model has 28 transformer blocks (0-27)"
    with pytest.raises(ValueError) as e:
        lb.check_blocks(big, (31,))
    assert str(e.value) == "STG block 31 is out of range: this model has 28 transformer blocks (0-27)"


def test_isolation_needs_ltxav(comfy, ltxv):
    from cfg_runtime.adapters.models.model_checks import check_policy_fits_model
    from cfg_runtime.errors import PolicyError
    from cfg_runtime.guidance.policy import CFGBranch, CFGPolicy, WeightedBranches

    def policy(branch):
        return CFGPolicy("p", (CFGBranch("cond"), branch), WeightedBranches((("cond", 1.0), (branch.name, 0.5))))

    check_policy_fits_model(policy(CFGBranch("ptb", perturb_blocks=(1,))), ltxv)
    with pytest.raises(PolicyError, match="modality-isolated pass, which needs an LTX-2"):
        check_policy_fits_model(policy(CFGBranch("iso", isolate_modalities=True)), ltxv)


@pytest.fixture(scope="module")
def ltxv_patcher(comfy, ltxv):
    import comfy.sd
    sd = {k: v.clone() for k, v in ltxv.state_dict().items()}
    mp = comfy.sd.load_diffusion_model_state_dict(
        sd, metadata={"config": json.dumps({"transformer": LTXV_CFG})})
    assert mp is not None
    return mp


def test_model_patcher_and_base_model(comfy, ltxv_patcher):
    assert lb.model_family(ltxv_patcher) == "ltxv"
    assert lb.model_family(ltxv_patcher.model) == "ltxv"
    assert lb.count_transformer_blocks(ltxv_patcher) == 3
    assert lb.count_transformer_blocks(ltxv_patcher.model) == 3
    with pytest.raises(ValueError, match=r"STG block 7 is out of range: this model has 3 "):
        lb.check_blocks(ltxv_patcher, (7,))


def test_through_comfyui_sampler(comfy, ltxv_patcher):
    """The options travel through ComfyUI's own sampling code (calc_cond_batch copies
    and merges transformer_options) and give exactly the hand-made reference."""
    import comfy.sample
    g = torch.Generator().manual_seed(7)
    pos = [[torch.randn(1, 8, 32, generator=g), {"attention_mask": torch.ones(1, 8)}]]
    neg = [[torch.randn(1, 8, 32, generator=g), {"attention_mask": torch.ones(1, 8)}]]
    latent = torch.zeros(1, 128, 2, 2, 2)
    noise = torch.randn(1, 128, 2, 2, 2, generator=g)

    def sample(m):
        return comfy.sample.sample(m, noise, 3, 1.0, "euler", "simple", pos, neg, latent,
                                   seed=1, disable_pbar=True)

    cond = sample(ltxv_patcher)
    m = ltxv_patcher.clone()
    m.model_options = lb.branch_model_options(m.model_options, perturb_blocks=(1,))
    ptb = sample(m)
    ref = ltxv_patcher.clone()
    attn1 = ltxv_patcher.model.diffusion_model.transformer_blocks[1].attn1
    ref.add_object_patch("diffusion_model.transformer_blocks.1.attn1", _RefValuePassthrough(attn1))
    want = sample(ref)
    assert not torch.equal(cond, ptb)
    assert torch.equal(ptb, want)
    assert torch.equal(sample(ltxv_patcher), cond)


# --------------------------------------------------------------------------------------
# ComfyUI 0.29 only: guide-attention split of the self-attention, and LTX-2 AV
# --------------------------------------------------------------------------------------

@needs_029
def test_guide_mask_split_self_attention(comfy, ltxv):
    """0.29 splits a guided self-attention into several calls over query slices that
    share k/v; the passthrough must give each slice its own rows of v."""
    import comfy.ldm.lightricks.model as m
    if not hasattr(m, "_attention_with_guide_mask"):
        pytest.skip("this ComfyUI has no guide-attention mask")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 128, 3, 2, 2, generator=g)  # 12 tokens, the last frame (4) are guides
    kwargs = dict(
        keyframe_idxs=torch.rand(1, 3, 4, 2, generator=g) * 10,
        denoise_mask=torch.ones(1, 1, 3, 2, 2),
        guide_attention_entries=[{"pre_filter_count": 4, "strength": 0.5}],
    )
    t = torch.full((1, 12), 0.5)
    ctx = torch.randn(1, 8, 32, generator=g)

    def run(dm, mo=None):
        to = (mo or {}).get("transformer_options", {})
        with torch.no_grad():
            return dm(x.clone(), t, ctx, torch.ones(1, 8), transformer_options=to, **kwargs)

    counter = CountingOverride()
    cond = run(ltxv, {"transformer_options": {"optimized_attention_override": counter}})
    assert counter.calls == 3 * 3  # attn1 split in 2 (noisy, guides) + attn2, per block
    mo = lb.branch_model_options({}, perturb_blocks=(1,))
    ptb = run(ltxv, mo)
    assert not torch.equal(cond, ptb)
    assert torch.equal(ptb, run(reference_model(ltxv, (1,))))
    assert torch.equal(run(ltxv, via_override(mo)), ptb)  # slices of one self-attention: rows of v


@pytest.fixture(scope="module")
def ltxav(comfy):
    try:
        import comfy.ldm.lightricks.av_model as av
    except ImportError:
        pytest.skip(f"{COMFY_DIR} has no LTX-2 model (comfy/ldm/lightricks/av_model.py)")
    dm = av.LTXAVModel(**LTXAV_CFG, operations=comfy.ops.disable_weight_init)
    return _init(dm, seed=1)


@pytest.fixture(scope="module")
def ltxav_inputs():
    g = torch.Generator().manual_seed(321)
    return dict(vx=torch.randn(1, 128, 2, 2, 2, generator=g), ax=torch.randn(1, 8, 5, 16, generator=g),
                timestep=torch.tensor([0.5]), context=torch.randn(1, 8, 64, generator=g),
                attention_mask=torch.ones(1, 8))


def run_ltxav(dm, inputs, model_options=None, audio=True):
    to = (model_options or {}).get("transformer_options", {})
    x = [inputs["vx"].clone()] + ([inputs["ax"].clone()] if audio else [])
    with torch.no_grad():
        out = dm(x, inputs["timestep"], inputs["context"], inputs["attention_mask"],
                 transformer_options=to)
    return out if isinstance(out, list) else [out]


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


AV_CROSS = ("audio_to_video_attn", "video_to_audio_attn")


@needs_029
def test_ltxav_family_and_blocks(comfy, ltxav):
    assert lb.model_family(ltxav) == "ltxav"
    assert lb.count_transformer_blocks(ltxav) == 3
    _fits(ltxav, CFGBranchT("ptb", perturb_blocks=(0, 2)), CFGBranchT("iso", isolate_modalities=True))
    with pytest.raises(ValueError, match=r"^STG block 3 is out of range: this model has 3 "):
        lb.check_blocks(ltxav, (3,))


@needs_029
def test_ltxav_isolated_pass(comfy, ltxav, ltxav_inputs):
    with AttnRecorder(ltxav) as rec_c:
        cond = run_ltxav(ltxav, ltxav_inputs)
    with AttnRecorder(ltxav) as rec_i:
        iso = run_ltxav(ltxav, ltxav_inputs, lb.branch_model_options({}, isolate_modalities=True))
    for name in AV_CROSS:
        assert sum(rec_c.calls[(i, name)] for i in range(3)) == 3
        assert sum(rec_i.calls[(i, name)] for i in range(3)) == 0
    for name in ("attn1", "attn2", "audio_attn1", "audio_attn2"):
        assert sum(rec_i.calls[(i, name)] for i in range(3)) == 3
    assert not rec_i.passthrough
    assert not torch.equal(cond[0], iso[0]) and not torch.equal(cond[1], iso[1])
    assert _equal(run_ltxav(ltxav, ltxav_inputs), cond)  # nothing leaked


def _self_attn(video=(), audio=()):
    return {(b, "attn1") for b in video} | {(b, "audio_attn1") for b in audio}


def _ref_ltxav(dm, video=(), audio=()):
    """TEST ONLY: a copy of the model whose chosen self-attention modules are passthrough,
    only in the intended stream."""
    ref = reference_model(dm, video, names=("attn1",))
    return reference_model(ref, audio, names=("audio_attn1",))


# (video blocks, audio blocks): video only, audio only, both same, both different (and overlapping)
STREAM_CASES = [((1,), ()), ((), (1,)), ((1,), (1,)), ((0,), (2,)), ((0, 2), (2, 1))]


@needs_029
@pytest.mark.parametrize("video,audio", STREAM_CASES, ids=lambda c: "-".join(map(str, c)) or "none")
def test_ltxav_perturbs_exactly_the_listed_blocks_of_each_stream(comfy, ltxav, ltxav_inputs, video, audio):
    counter = CountingOverride()
    base = {"transformer_options": {"optimized_attention_override": counter}}
    cond = run_ltxav(ltxav, ltxav_inputs, base)
    assert counter.calls == 18
    counter.calls = 0
    mo = lb.branch_model_options(base, perturb_blocks=video, perturb_audio_blocks=audio)
    with AttnRecorder(ltxav) as rec:
        ptb = run_ltxav(ltxav, ltxav_inputs, mo)
    want = _self_attn(video, audio)
    # hook hits per block and per stream: the perturbed self-attentions computed V and to_out only
    assert rec.replaced() == want
    for i, name in want:
        assert [rec.proj[(i, name, p)] for p in AttnRecorder.PROJ] == [0, 0, 1, 1]
    every = {(i, n) for i in range(3) for n in ("attn1", "attn2", "audio_attn1", "audio_attn2") + AV_CROSS}
    assert set(rec.calls) == every - want and all(n == 1 for n in rec.calls.values())
    assert counter.calls == 18 - len(want)
    # the reference perturbs only the intended stream, bit for bit
    assert _equal(ptb, run_ltxav(_ref_ltxav(ltxav, video, audio), ltxav_inputs))
    # and it is not the both-streams perturbation (the bug of issue 13)
    both = sorted(set(video) | set(audio))
    if (tuple(video), tuple(audio)) != (tuple(both), tuple(both)):
        assert not _equal(ptb, run_ltxav(_ref_ltxav(ltxav, both, both), ltxav_inputs))
    # a stream perturbed (directly or through audio<->video cross-attention) differs from cond
    assert not torch.equal(cond[0], ptb[0]) and not torch.equal(cond[1], ptb[1])
    # the override route gives the same bits and perturbs the same modules
    counter.calls = 0
    with AttnRecorder(ltxav) as rec:
        over = run_ltxav(ltxav, ltxav_inputs, via_override(mo))
    assert _equal(over, ptb)
    assert set(rec.passthrough) == want and not rec.replaced() and len(rec.calls) == 18
    assert counter.calls == 18 - len(want)


@needs_029
@pytest.mark.parametrize("video,audio,isolate", [((1,), (1,), False), ((0, 2), (), False), ((), (0,), True),
                                                 ((2,), (0,), True)])
def test_ltxav_matches_hand_reference(comfy, ltxav, ltxav_inputs, video, audio, isolate):
    mo = lb.branch_model_options({}, perturb_blocks=video, perturb_audio_blocks=audio, isolate_modalities=isolate)
    got = run_ltxav(ltxav, ltxav_inputs, pickle.loads(pickle.dumps(mo)))
    ref_opts = lb.branch_model_options({}, isolate_modalities=isolate)
    assert _equal(got, run_ltxav(_ref_ltxav(ltxav, video, audio), ltxav_inputs, ref_opts))


@needs_029
def test_ltxav_without_audio(comfy, ltxav, ltxav_inputs):
    """An AV model run on video only (empty audio): only the video self-attention."""
    mo = lb.branch_model_options({}, perturb_blocks=(1,), perturb_audio_blocks=(1, 2))
    with AttnRecorder(ltxav) as rec:
        got = run_ltxav(ltxav, ltxav_inputs, mo, audio=False)
    assert rec.replaced() == {(1, "attn1")}
    assert not any(name.startswith("audio") for _, name in rec.calls)
    ref = run_ltxav(_ref_ltxav(ltxav, (1,)), ltxav_inputs, audio=False)
    assert _equal(got, ref)
    assert _equal(run_ltxav(ltxav, ltxav_inputs, via_override(mo), audio=False), ref)
    # audio blocks alone perturb nothing on a video-only latent
    assert _equal(run_ltxav(ltxav, ltxav_inputs, lb.branch_model_options({}, perturb_audio_blocks=(1,)), audio=False),
                  run_ltxav(ltxav, ltxav_inputs, audio=False))


@pytest.fixture(scope="module")
def ltxav23(comfy):
    """LTX-2.3-style blocks: gated attention and ADaLN text cross-attention."""
    try:
        import comfy.ldm.lightricks.av_model as av
    except ImportError:
        pytest.skip(f"{COMFY_DIR} has no LTX-2 model (comfy/ldm/lightricks/av_model.py)")
    dm = av.LTXAVModel(**LTXAV_CFG, apply_gated_attention=True, cross_attention_adaln=True,
                       operations=comfy.ops.disable_weight_init)
    return _init(dm, seed=2)


@needs_029
@pytest.mark.parametrize("video,audio", [((2,), (2,)), ((2,), (0,)), ((), (1,))])
def test_ltx23_style_blocks_match_hand_reference(comfy, ltxav23, ltxav_inputs, video, audio):
    assert ltxav23.transformer_blocks[0].attn1.to_gate_logits is not None
    mo = lb.branch_model_options({}, perturb_blocks=video, perturb_audio_blocks=audio)
    with AttnRecorder(ltxav23) as rec:
        got = run_ltxav(ltxav23, ltxav_inputs, mo)
    assert rec.replaced() == _self_attn(video, audio)
    ref = run_ltxav(_ref_ltxav(ltxav23, video, audio), ltxav_inputs)
    assert _equal(got, ref)
    assert _equal(run_ltxav(ltxav23, ltxav_inputs, via_override(mo)), ref)  # the module's own gate code
    assert not _equal(got, run_ltxav(ltxav23, ltxav_inputs))


@needs_029
def test_ltxav_video_stream_off(comfy, ltxav, ltxav_inputs):
    """run_vx=False (a per-call key of the AV block): only the audio self-attention."""
    base = {"transformer_options": {"run_vx": False}}
    mo = lb.branch_model_options(base, perturb_blocks=(1,), perturb_audio_blocks=(1,))
    with AttnRecorder(ltxav) as rec:
        got = run_ltxav(ltxav, ltxav_inputs, mo)
    assert rec.replaced() == {(1, "audio_attn1")}
    assert not any(name in ("attn1", "attn2") for _, name in rec.calls)
    ref = run_ltxav(_ref_ltxav(ltxav, (), (1,)), ltxav_inputs, base)
    assert _equal(got, ref)
    assert _equal(run_ltxav(ltxav, ltxav_inputs, via_override(mo)), ref)


@needs_029
def test_ltxav_check_branch_per_stream(comfy, ltxav, ltxv):
    from cfg_runtime.errors import PolicyError

    _fits(ltxav, CFGBranchT("ptb", perturb_blocks=(0,), perturb_audio_blocks=(2,)))
    with pytest.raises(PolicyError, match=r"\(audio_stg_blocks\): STG block 3 is out of range"):
        _fits(ltxav, CFGBranchT("ptb", perturb_audio_blocks=(3,)))
    _fits(ltxv, CFGBranchT("ptb", perturb_audio_blocks=(29,)))  # no audio stream: nothing to check


def CFGBranchT(name, **kw):
    from cfg_runtime.guidance.policy import CFGBranch

    return CFGBranch(name, **kw)


def _fits(model, *branches):
    """The one policy-vs-model check (adapters.models.model_checks) on a policy of cond + these branches."""
    from cfg_runtime.adapters.models.model_checks import check_policy_fits_model
    from cfg_runtime.guidance.policy import CFGBranch, CFGPolicy, WeightedBranches

    policy = CFGPolicy("p", (CFGBranch("cond"),) + branches, WeightedBranches(tuple((b.name, 0.5) for b in branches)))
    check_policy_fits_model(policy, model)
