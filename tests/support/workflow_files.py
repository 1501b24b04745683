"""The pack's workflow files (workflows/api, workflows/ui, example_workflows, the old saved
ones in tests/data) and workflows/build.py, which renders them, loaded once for the tests."""
from __future__ import annotations

import importlib.util
import json
import sys

from support.paths import REPO, has_ltx2_av

WORKFLOWS = REPO / "workflows"
EXAMPLES = REPO / "example_workflows"


def _load_build():
    spec = importlib.util.spec_from_file_location("cfgp_workflows_build", WORKFLOWS / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


build = _load_build()
NAMES = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))
OFFICIAL_LTX2 = {"ltx2_one_stage", "ltx2_two_stage"}  # the user workflows, at LTX-2's official settings
LTX2_WORKFLOWS = OFFICIAL_LTX2 | {"tiny_ltx2_demo"}  # need LTX-2 audio+video core nodes (ComfyUI 0.29)
# their models and nodes exist on the test server (tests/conftest.py installs them)
RUNNABLE_AS_IS = {"tiny_demo", "tiny_status_demo"} | ({"tiny_ltx2_demo"} if has_ltx2_av() else set())
EXAMPLE_NAMES = {"plain_cfg": "Plain CFG on two GPUs (any model)",
                 "ltx2_one_stage": "LTX-2 one stage on four GPUs (multimodal guidance)",
                 "ltx2_two_stage": "LTX-2 two stage on four GPUs (LTX2 Sampler)",
                 "ksampler_cfg_parallel": "Add one node - KSampler on two GPUs",
                 "ksampler_four_seeds": "Four seeds (batch 4) on four GPUs",
                 "wan22_two_experts": "Wan 2.2 two experts (KSamplerAdvanced) on two GPUs",
                 "sdxl_pag_three_gpus": "SDXL with PAG - three passes on three GPUs",
                 "ksampler_group_decode": "KSampler and VAE decode on two GPUs"}  # name -> template file stem
# The example workflows as 0.1 saved them (ids without the pack prefix): they must still load.
LEGACY_DIR = REPO / "tests" / "data" / "legacy_workflows"
LEGACY_NAMES = sorted(p.stem for p in LEGACY_DIR.glob("*.json"))


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS / "ui" / f"{name}.json").read_text())


def strip_meta(prompt: dict) -> dict:
    return {nid: {k: v for k, v in node.items() if k != "_meta"} for nid, node in prompt.items()}
