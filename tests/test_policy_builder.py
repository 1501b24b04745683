"""CFGPolicy Builder (nodes/policy_builder.py): LTX-2 settings refused before sampling, with
messages that say what to write; blocks of an STG scale 0 accepted and dropped. Plain
Python (the node module needs no ComfyUI)."""
from __future__ import annotations

import importlib.util

import pytest

from cfg_runtime.errors import PolicyError
from support.paths import REPO
from support.tiny_ltx2 import POLICY_DEFAULTS


def _builder():
    spec = importlib.util.spec_from_file_location("cfgp_policy_builder_under_test", REPO / "nodes" / "policy_builder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PB = _builder()


def build(**kw):
    return PB.CFGPolicyBuilder().build(**{**POLICY_DEFAULTS, **kw})[0]


def test_defaults_build_separate_video_and_audio_blocks():
    pol = build(video_stg_blocks="29", audio_stg_blocks="28, 29")
    ptb = pol.branch("perturbed")
    assert ptb.perturb_blocks == (29,) and ptb.perturb_audio_blocks == (28, 29)
    assert "STG video blocks [29], STG audio blocks [28, 29]" in pol.describe()


@pytest.mark.parametrize("text,what", [
    ("29a", r"video_stg_blocks: '29a' is not a block index\. Write block numbers counting from 0, separated by "
            r"commas, e.g\. '29' \(LTX-2\) or '28' \(LTX-2\.3\) or '28,29'\."),
    ("-1", r"'-1' is not a block index"),
    ("28 29", r"'28 29' is not a block index"),
    ("1.5", r"'1\.5' is not a block index"),
    ("29,29", r"video_stg_blocks: block 29 is listed twice in '29,29'; list each block once\."),
])
def test_malformed_block_lists(text, what):
    with pytest.raises(PolicyError, match=what):
        build(video_stg_blocks=text)
    with pytest.raises(PolicyError, match=what.replace("video", "audio")):
        build(audio_stg_blocks=text)


def test_stg_scale_without_blocks():
    with pytest.raises(PolicyError, match=r"^audio_stg is 1\.0 but audio_stg_blocks is empty: write the blocks to "
                                          r"perturb, e\.g\. '29' \(LTX-2\) or '28' \(LTX-2\.3\), or set audio_stg to 0\.$"):
        build(audio_stg_blocks=" , ")


def test_blocks_without_stg_scale_are_dropped():
    """stg 0 with blocks: no perturbed pass for that modality; the blocks may stay in the widget."""
    pol = build(video_stg=0.0, video_stg_blocks="29", audio_stg=1.0, audio_stg_blocks="28")
    assert pol.rule.video.stg_blocks == () and pol.branch("perturbed").perturb_blocks == ()
    assert pol.branch("perturbed").perturb_audio_blocks == (28,)
    none = build(video_stg=0.0, audio_stg=0.0)
    assert "perturbed" not in none.names
    # malformed stays malformed, whatever the scale
    with pytest.raises(PolicyError, match="not a block index"):
        build(video_stg=0.0, video_stg_blocks="x")


def test_other_presets_ignore_the_ltx_widgets():
    assert build(preset="standard_cfg", video_stg_blocks="x", audio_stg_blocks="").names == ("cond", "negative")


def test_tooltips_say_what_each_parameter_does():
    req = PB.CFGPolicyBuilder.INPUT_TYPES()["required"]
    for m in ("video", "audio"):
        assert "ignored when it is 0" in req[f"{m}_stg_blocks"][1]["tooltip"]
        assert "(cfg - 1)" in req[f"{m}_cfg"][1]["tooltip"]
        assert "std(cond)/std(guided)" in req[f"{m}_rescale"][1]["tooltip"]
