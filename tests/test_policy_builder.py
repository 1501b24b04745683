"""CFGPolicy Builder and the LTX-2 guidance nodes (nodes/policy_builder.py, V3 API): LTX-2
settings refused before sampling, with messages that say what to write; blocks of an STG
scale 0 accepted and dropped; the builder shows the standard-CFG widgets only; the
deprecated id keeps its widgets and results. In-process (ComfyUI's comfy_api on the path)."""
from __future__ import annotations

import sys

import pytest

from cfg_runtime.errors import PolicyError
from cfg_runtime.guidance.ltx import ModalityGuidance
from support.pack_nodes import pack_nodes as _nodes
from support.paths import comfyui_available
from support.tiny_ltx2 import POLICY_DEFAULTS

pytestmark = pytest.mark.skipif(not comfyui_available(), reason="needs ComfyUI's comfy_api (V3 node API)")


@pytest.fixture(scope="module")
def PB():
    return sys.modules[_nodes().__name__ + ".policy_builder"]


def legacy(PB, **kw):
    return PB.LEGACY["CFGPolicyBuilder"].execute(**{**POLICY_DEFAULTS, **kw}).args[0]


def video(PB, **kw):
    d = {"cfg": 3.0, "stg": 1.0, "stg_blocks": "29", "modality": 3.0, "rescale": 0.7, "skip_step": 0, **kw}
    return PB.LTX2VideoGuidance.execute(**d).args[0]


def audio(PB, **kw):
    d = {"cfg": 7.0, "stg": 1.0, "stg_blocks": "29", "modality": 3.0, "rescale": 0.7, "skip_step": 0, **kw}
    return PB.LTX2AudioGuidance.execute(**d).args[0]


def build(PB, preset="ltx2_multimodal", **kw):
    d = {"preset": preset, "cfg": 4.0, "guidance_rescale": 0.0, "cfg_zero_star": False, "zero_init_steps": 0, **kw}
    return PB.CFGPolicyBuilder.execute(**d).args[0]


def test_defaults_build_separate_video_and_audio_blocks(PB):
    for pol in (legacy(PB, video_stg_blocks="29", audio_stg_blocks="28, 29"),
                build(PB, video=video(PB, stg_blocks="29"), audio=audio(PB, stg_blocks="28, 29"))):
        ptb = pol.branch("perturbed")
        assert ptb.perturb_blocks == (29,) and ptb.perturb_audio_blocks == (28, 29)
        assert "STG video blocks [29], STG audio blocks [28, 29]" in pol.describe()


def test_unconnected_modalities_are_the_official_values(PB):
    official_v, official_a = ModalityGuidance.official("2.0")
    pol = build(PB)
    assert (pol.rule.video, pol.rule.audio) == (official_v, official_a)
    assert pol.names == ("cond", "negative", "perturbed", "isolated")
    # the guidance nodes' defaults are the same home's values
    for cls, d in ((PB.LTX2VideoGuidance, official_v), (PB.LTX2AudioGuidance, official_a)):
        req = cls.GET_NODE_INFO_V1()["input"]["required"]
        assert {k: req[k][1]["default"] for k in ("cfg", "stg", "modality", "rescale", "skip_step")} == \
            {"cfg": d.cfg, "stg": d.stg, "modality": d.modality, "rescale": d.rescale, "skip_step": d.skip_step}
        assert req["stg_blocks"][1]["default"] == ",".join(map(str, d.stg_blocks))


@pytest.mark.parametrize("text,what", [
    ("29a", r"stg_blocks: '29a' is not a block index\. Write block numbers counting from 0, separated by "
            r"commas, e\.g\. '29' \(LTX-2\) or '28' \(LTX-2\.3\) or '28,29'\."),
    ("-1", r"'-1' is not a block index"),
    ("28 29", r"'28 29' is not a block index"),
    ("1.5", r"'1\.5' is not a block index"),
    ("29,29", r"stg_blocks: block 29 is listed twice in '29,29'; list each block once\."),
])
def test_malformed_block_lists(PB, text, what):
    for m in ("video", "audio"):
        with pytest.raises(PolicyError, match=what) as err:
            legacy(PB, **{f"{m}_stg_blocks": text})
        assert str(err.value).startswith(f"{m}_stg_blocks: ")
    with pytest.raises(PolicyError, match=what) as err:
        video(PB, stg_blocks=text)
    assert str(err.value).startswith("stg_blocks: ")


def test_stg_scale_without_blocks(PB):
    with pytest.raises(PolicyError, match=r"^audio_stg is 1\.0 but audio_stg_blocks is empty: write the blocks to "
                                          r"perturb, e\.g\. '29' \(LTX-2\) or '28' \(LTX-2\.3\), or set audio_stg to 0\.$"):
        legacy(PB, audio_stg_blocks=" , ")
    with pytest.raises(PolicyError, match=r"^stg is 1\.0 but stg_blocks is empty"):
        audio(PB, stg_blocks="")


def test_blocks_without_stg_scale_are_dropped(PB):
    """stg 0 with blocks: no perturbed pass for that modality; the blocks may stay in the widget."""
    pol = legacy(PB, video_stg=0.0, video_stg_blocks="29", audio_stg=1.0, audio_stg_blocks="28")
    assert pol.rule.video.stg_blocks == () and pol.branch("perturbed").perturb_blocks == ()
    assert pol.branch("perturbed").perturb_audio_blocks == (28,)
    none = build(PB, video=video(PB, stg=0.0), audio=audio(PB, stg=0.0))
    assert "perturbed" not in none.names
    with pytest.raises(PolicyError, match="not a block index"):  # malformed stays malformed, whatever the scale
        legacy(PB, video_stg=0.0, video_stg_blocks="x")


def test_other_presets_ignore_the_ltx_widgets(PB):
    assert legacy(PB, preset="standard_cfg", video_stg_blocks="x", audio_stg_blocks="").names == ("cond", "negative")
    assert build(PB, preset="standard_cfg", cfg=7.0).names == ("cond", "negative")
    assert build(PB, preset="standard_cfg", cfg=1.0).names == ("cond",)


def test_custom_preset_reads_its_text_input(PB):
    assert build(PB, preset="custom", custom_branches="neg:negative:2.0\nalt:positive:0.5").names == \
        ("cond", "neg", "alt")
    with pytest.raises(PolicyError, match="connect a String \\(Multiline\\) node"):
        build(PB, preset="custom")


def test_builder_shows_only_the_standard_cfg_widgets(PB):
    """A plain-CFG graph shows preset + the four standard-CFG widgets; LTX-2 and custom come in as sockets."""
    info = PB.CFGPolicyBuilder.GET_NODE_INFO_V1()
    assert list(info["input"]["required"]) == ["preset", "cfg", "guidance_rescale", "cfg_zero_star",
                                               "zero_init_steps"]
    optional = info["input"]["optional"]
    assert optional["video"][0] == "CFGP_LTX2_VIDEO_GUIDANCE" and optional["audio"][0] == "CFGP_LTX2_AUDIO_GUIDANCE"
    assert optional["custom_branches"][1]["forceInput"] is True
    assert info["name"] == "CFGParallelMultiGPU_PolicyBuilder" and info["display_name"] == "CFGPolicy Builder"


def test_tooltips_say_what_each_parameter_does(PB):
    req = PB.LEGACY["CFGPolicyBuilder"].GET_NODE_INFO_V1()["input"]["required"]
    for m in ("video", "audio"):
        assert "ignored when it is 0" in req[f"{m}_stg_blocks"][1]["tooltip"]
        assert "(cfg - 1)" in req[f"{m}_cfg"][1]["tooltip"]
        assert "std(cond)/std(guided)" in req[f"{m}_rescale"][1]["tooltip"]


def test_every_input_and_output_has_a_tooltip_and_the_ids_are_registered_once():
    pack = _nodes()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id, (node_id, info["name"])
        assert info["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert info["description"], node_id
        for section in ("required", "optional"):
            for name, spec in (info["input"].get(section) or {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(info["output_tooltips"]), f"{node_id}: an output has no tooltip: {info['output_tooltips']}"
        assert info["deprecated"] == (node_id in pack.RENAMED), node_id
        # beside core's: guiders and samplers, model patches, advanced/multigpu; the VAE decode beside VAE Decode
        assert info["category"].split("/")[0] in ("sampling", "model", "advanced", "latent"), info["category"]
    for old, new in pack.RENAMED.items():
        assert new.startswith("CFGParallelMultiGPU_") and new in pack.NODE_CLASS_MAPPINGS
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[old] == pack.NODE_DISPLAY_NAME_MAPPINGS[new]
    assert len(set(pack.NODE_CLASS_MAPPINGS.values())) == len(pack.NODE_CLASS_MAPPINGS)  # no class twice
