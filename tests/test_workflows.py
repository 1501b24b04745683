"""The example workflows (workflows/api, workflows/ui, example_workflows) against a real ComfyUI.

- The files are what workflows/build.py renders from workflows/graphs.py (one description,
  so the API and UI versions cannot drift), and example_workflows/ holds byte-identical
  copies of the UI files that ComfyUI's template browser offers.
- Every API file is valid against the live server's /object_info: node types exist, input
  names and value types match (ranges, combo options), every link's origin output type fits
  the target input type.
- Every UI file is well-formed (link table consistent with the nodes' slots) and, read the
  way the web frontend reads it (widgets in input order, "control after generate" values,
  link slots), gives exactly its API file. The frontend itself does the same check in
  tests/test_browser.py.
- The graphs run end to end on the test server: the tiny demo as it is, and tiny variants
  of the three user workflows (tiny model, random conditioning, LTX-2-only nodes removed).

The suite runs once per ComfyUI (scripts/test.sh). ComfyUI 0.3.75 has no LTX-2 audio+video
nodes (build.LTX2_CORE_TYPES): there nodes of those types are checked against the schemas in
workflows/build.py only, and the tests that need them skip ("[needs ComfyUI 0.29]"). On
ComfyUI 0.29 every node type of every workflow must exist and match.
"""
from __future__ import annotations

import copy
import json
import zlib

import pytest

from support.node_defs import NodeDef
from support.paths import NEEDS_029, has_ltx2_av
from support.workflow_files import (EXAMPLE_NAMES, EXAMPLES, LEGACY_DIR, LEGACY_NAMES, LTX2_WORKFLOWS, NAMES,
                                    OFFICIAL_LTX2, RUNNABLE_AS_IS, WORKFLOWS, build, load_api, load_ui, strip_meta)

FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".gguf", ".sft", ".bin")


# ---------------------------------------------------------------------------------------
# Reading /object_info the way the server and the frontend do
# ---------------------------------------------------------------------------------------
def node_def_from_schema(schema) -> NodeDef:
    """A NodeDef built from workflows/build.py's schema (for types the server lacks)."""
    info = {"input": {"required": {}, "optional": {}}, "input_order": {"required": [], "optional": []},
            "output": [t for _, t in schema.outputs]}
    for i in schema.inputs:
        section = "optional" if i.optional else "required"
        opts = {"control_after_generate": True} if i.control else {}
        if i.socket:
            opts["forceInput"] = True
        info["input"][section][i.name] = [i.type, opts]
        info["input_order"][section].append(i.name)
    return NodeDef(info)


def types_compatible(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    return bool(set(str(out_type).split(",")) & set(str(in_type).split(",")))


class Defs:
    """Node definitions: the live server's, falling back to build.SCHEMAS (recorded as such)."""

    def __init__(self, object_info: dict):
        self.object_info = object_info
        self.fallback_used: set[str] = set()

    def get(self, node_type: str) -> NodeDef | None:
        if node_type in self.object_info:
            return NodeDef(self.object_info[node_type])
        if node_type in build.SCHEMAS:
            self.fallback_used.add(node_type)
            return node_def_from_schema(build.SCHEMAS[node_type])
        return None


def check_value(name: str, typ, opts: dict, value, strict_files: bool) -> str | None:
    """Why a widget value is invalid for its input spec (None when fine)."""
    types = set(str(typ).split(","))
    if "COMBO" in types:
        options = opts.get("options") or []
        if not isinstance(value, str):
            return f"{name}: combo value {value!r} is not a string"
        is_file = value.lower().endswith(FILE_SUFFIXES)
        if options and value not in options and (strict_files or not is_file):
            return f"{name}: {value!r} is not one of {options[:12]}"
        return None
    if types & {"INT", "FLOAT"} and not types & {"STRING", "BOOLEAN"}:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
        if types == {"INT"} and not float(value).is_integer():
            return f"{name}: {value!r} is not an integer"
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            return f"{name}: {value} outside [{lo}, {hi}]"
        return None
    if types == {"BOOLEAN"} and not isinstance(value, bool):
        return f"{name}: {value!r} is not a boolean"
    if types == {"STRING"} and not isinstance(value, str):
        return f"{name}: {value!r} is not a string"
    return None


def validate_api(prompt: dict, defs: Defs, strict_files: bool = False) -> tuple[list[str], set[str]]:
    """(problems, node types the live server lacks). Types the server lacks are checked
    against build.SCHEMAS; a type unknown to both is a problem."""
    problems, missing = [], set()
    for nid, node in prompt.items():
        ct = node.get("class_type")
        if ct not in defs.object_info:
            missing.add(ct)
        d = defs.get(ct)
        where = f"node {nid} ({ct})"
        if d is None:
            problems.append(f"{where}: unknown node type")
            continue
        inputs = node.get("inputs") or {}
        for req in d.required:
            if req not in inputs:
                problems.append(f"{where}: required input {req!r} missing")
        for name, value in inputs.items():
            spec = d.spec(name)
            if spec is None:
                problems.append(f"{where}: no input named {name!r}")
                continue
            _, typ, opts, _ = spec
            if isinstance(value, list):  # a link [origin id, output slot]
                if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], int):
                    problems.append(f"{where}.{name}: malformed link {value!r}")
                    continue
                origin = prompt.get(value[0])
                if origin is None:
                    problems.append(f"{where}.{name}: links to missing node {value[0]}")
                    continue
                od = defs.get(origin["class_type"])
                if od is None:
                    continue  # reported at the origin node
                if not 0 <= value[1] < len(od.outputs):
                    problems.append(f"{where}.{name}: {origin['class_type']} has no output {value[1]}")
                    continue
                out_type = od.outputs[value[1]]
                in_type = "COMBO" if typ == "COMBO" else typ
                if not types_compatible(out_type, in_type):
                    problems.append(f"{where}.{name}: link type {out_type} from node {value[0]} "
                                    f"({origin['class_type']}) does not fit input type {in_type}")
            else:
                if not NodeDef.is_widget(typ, opts):
                    problems.append(f"{where}.{name}: socket input of type {typ} needs a link, got {value!r}")
                    continue
                why = check_value(name, typ, opts, value, strict_files)
                if why:
                    problems.append(f"{where}: {why}")
    return problems, missing


def ui_to_api(ui: dict, defs: Defs) -> dict:
    """What the frontend's graphToPrompt gives for a UI file (without _meta), computed from
    the node definitions: widget values in input order (skipping 'control after generate'
    values), links by the target input's slot. Frontend-only nodes are dropped."""
    links = {l[0]: l for l in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node["type"] in build.VIRTUAL_TYPES or node.get("mode", 0) in (2, 4):
            continue
        d = defs.get(node["type"])
        assert d is not None, f"node {node['id']}: unknown type {node['type']}"
        inputs = {}
        values = list(node.get("widgets_values") or [])
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, typ, opts in d.widgets:
            if not values:
                break  # trailing widgets left out of the file keep their defaults
            value = values.pop(0)
            if NodeDef.has_control(name, typ, opts):
                values.pop(0)
            if name not in linked:
                inputs[name] = value
        assert not values, f"node {node['id']} ({node['type']}): {len(values)} widget values left over"
        for slot, inp in enumerate(node.get("inputs", [])):
            lid = inp.get("link")
            if lid is None:
                continue
            link = links[lid]
            assert link[3] == node["id"] and link[4] == slot, f"link {lid} does not end at node {node['id']} slot {slot}"
            inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def same_values(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------------------------
# Files: generated, complete, mirrored into example_workflows/
# ---------------------------------------------------------------------------------------
def test_files_are_generated_from_the_description():
    stale = build.stale_files(build.rendered_files())
    assert not stale, f"workflow files differ from workflows/graphs.py: {stale}; run `python workflows/build.py`"


def test_every_workflow_has_api_and_ui_versions():
    assert set(NAMES) == {"plain_cfg", "ltx2_one_stage", "ltx2_two_stage", "tiny_demo", "tiny_ltx2_demo",
                          "tiny_status_demo", "ksampler_cfg_parallel", "ksampler_four_seeds",
                          "wan22_two_experts", "sdxl_pag_three_gpus", "ksampler_group_decode"}
    assert NAMES == sorted(p.stem for p in (WORKFLOWS / "ui").glob("*.json"))
    # ComfyUI would list JSON files lying directly in workflows/ as templates of the pack.
    assert not list(WORKFLOWS.glob("*.json"))


def test_example_workflows_are_the_ui_files():
    """The template browser shows a custom pack's example by its file name (its title) and
    ``<name>.jpg`` as its thumbnail: readable names, a thumbnail for each."""
    examples = sorted(EXAMPLES.glob("*.json"))
    assert sorted(p.stem for p in examples) == sorted(EXAMPLE_NAMES.values())
    for name, title in EXAMPLE_NAMES.items():
        p = EXAMPLES / f"{title}.json"
        assert not p.is_symlink(), f"{p} must be a real file (ComfyUI's static route refuses outside symlinks)"
        assert p.read_bytes() == (WORKFLOWS / "ui" / f"{name}.json").read_bytes(), f"{p.name} differs from workflows/ui"
        assert json.loads(p.read_text())["extra"]["cfg_parallel"]["title"] == title
        thumb = EXAMPLES / f"{title}.jpg"
        assert thumb.is_file() and thumb.read_bytes()[:3] == b"\xff\xd8\xff", f"{thumb.name}: no JPEG thumbnail"
    # The tiny demos need the test-only node pack and the generated tiny model.
    assert not [p for p in examples if "tiny" in p.stem.lower()]


def test_tiny_demo_api_keeps_its_node_ids():
    prompt = load_api("tiny_demo")
    assert {nid: n["class_type"] for nid, n in prompt.items()} == {
        "1": "UNETLoader", "2": "CFGPTestConditioning", "3": "CFGPTestConditioning", "4": "EmptyLTXVLatentVideo",
        "5": "RandomNoise", "6": "KSamplerSelect", "7": "MultiBranchGuider", "8": "BasicScheduler",
        "9": "SamplerCustomAdvanced", "10": "SaveLatent", "12": "CFGPolicyBuilder"}
    assert prompt["7"]["inputs"]["parallel_size"] == 2
    assert prompt["12"]["inputs"]["preset"] == "ltx2_multimodal"
    assert prompt["9"]["inputs"]["guider"] == ["7", 0]


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_is_well_formed(name):
    ui = load_ui(name)
    assert ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes)
    link_ids = [l[0] for l in ui["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert ui["last_link_id"] >= max(link_ids)
    for lid, origin, oslot, target, tslot, typ in ui["links"]:
        out = nodes[origin]["outputs"][oslot]
        inp = nodes[target]["inputs"][tslot]
        assert lid in (out["links"] or []), f"link {lid} not listed by its origin node {origin}"
        assert inp["link"] == lid, f"link {lid} not listed by its target node {target} slot {tslot}"
        assert out["type"] == typ and types_compatible(typ, inp["type"]), f"link {lid}: {typ} -> {inp['type']}"
    for n in ui["nodes"]:
        for slot, out in enumerate(n.get("outputs", [])):
            for lid in out.get("links") or []:
                assert lid in link_ids and ui["links"][link_ids.index(lid)][1:3] == [n["id"], slot]
        for inp in n.get("inputs", []):
            assert inp["link"] is None or inp["link"] in link_ids
    # exactly one Note, which says what hardware the graph wants
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert len(text) > 300 and ("GPU" in text or "CPU" in text) and "Settings" in text
    # tidy layout: no two node boxes (title bar included) overlap, every grouped node sits in its group
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - build.TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2], f"nodes {a[0]} and {b[0]} overlap"
    for g in ui["groups"]:
        x, y, w, h = g["bounding"]
        inside = [bx for bx in boxes if x <= bx[1] and bx[3] <= x + w and y <= bx[2] and bx[4] <= y + h]
        assert inside, f"group {g['title']!r} holds no node"
    assert ui["groups"], "the graph has no groups"


@pytest.mark.parametrize("name", sorted(OFFICIAL_LTX2))
def test_ltx2_workflows_use_the_official_defaults(name):
    """The guidance nodes hold the official values from their one home (ModalityGuidance.official)."""
    from cfg_runtime.guidance.ltx import ModalityGuidance

    prompt = load_api(name)
    policy = next(n["inputs"] for n in prompt.values() if n["class_type"] == "CFGParallelMultiGPU_PolicyBuilder")
    assert policy["preset"] == "ltx2_multimodal"
    for key, official in zip(("video", "audio"), ModalityGuidance.official("2.0")):
        node = prompt[policy[key][0]]
        assert node["class_type"] == f"CFGParallelMultiGPU_LTX2{key.capitalize()}Guidance"
        got = node["inputs"]
        assert ModalityGuidance(cfg=got["cfg"], stg=got["stg"], stg_blocks=[int(b) for b in got["stg_blocks"].split(",")],
                                modality=got["modality"], rescale=got["rescale"], skip_step=got["skip_step"]) == official
    sched = next(n["inputs"] for n in prompt.values() if n["class_type"] == "LTXVScheduler")
    assert sched["steps"] == 40
    video = next(n["inputs"] for n in prompt.values() if n["class_type"] == "EmptyLTXVLatentVideo")
    assert (video["width"], video["height"], video["length"]) == (768, 512, 121)
    cond = next(n["inputs"] for n in prompt.values() if n["class_type"] == "LTXVConditioning")
    assert cond["frame_rate"] == 24.0


# ---------------------------------------------------------------------------------------
# Against the live server
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.mark.server
def test_schemas_of_the_builder_match_the_server(object_info):
    """workflows/build.py lays out sockets and widgets from its own schemas: they must be
    the server's (names, order, types, control widgets, outputs)."""
    problems = compare_schemas(object_info)
    absent = sorted(set(build.SCHEMAS) - set(object_info))
    assert not problems, "\n".join(problems)
    if has_ltx2_av():
        assert not absent, f"node types missing on this ComfyUI with LTX-2: {absent}"
    assert set(absent) <= build.LTX2_CORE_TYPES, f"types missing from the server that are not LTX-2 ones: {absent}"


def compare_schemas(object_info: dict) -> list[str]:
    problems = []
    for node_type, schema in build.SCHEMAS.items():
        if node_type not in object_info:
            continue
        d = NodeDef(object_info[node_type])
        live_req = [(n, t) for n, t, _, opt in d.inputs if not opt]
        mine_req = [(i.name, i.type) for i in schema.inputs if not i.optional]
        if live_req != mine_req:
            problems.append(f"{node_type}: required inputs {mine_req} != server's {live_req}")
        live_opt = [(n, t) for n, t, _, opt in d.inputs if opt]
        mine_opt = [(i.name, i.type) for i in schema.inputs if i.optional]
        if live_opt[:len(mine_opt)] != mine_opt:  # newer ComfyUI may append optional inputs
            problems.append(f"{node_type}: optional inputs {mine_opt} are not a prefix of the server's {live_opt}")
        for i in schema.inputs:
            spec = d.spec(i.name)
            if spec is None:
                continue
            _, typ, opts, _ = spec
            if i.is_widget != NodeDef.is_widget(typ, opts):
                problems.append(f"{node_type}.{i.name}: widget={i.is_widget}, server says {not i.is_widget}")
            if i.is_widget and i.control != NodeDef.has_control(i.name, typ, opts):
                problems.append(f"{node_type}.{i.name}: control after generate={i.control}, server's spec differs")
        mine_out = [t for _, t in schema.outputs]
        if d.outputs[:len(mine_out)] != mine_out:  # newer ComfyUI adds pass-through outputs to output nodes
            problems.append(f"{node_type}: outputs {mine_out} are not a prefix of the server's {d.outputs}")
        names = object_info[node_type].get("output_name") or []
        for slot, (name, _) in enumerate(schema.outputs):
            if slot < len(names) and names[slot] != name:
                problems.append(f"{node_type}: output {slot} is named {names[slot]!r} on the server, not {name!r}")
    return problems


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_api_workflow_valid_against_server(name, object_info):
    defs = Defs(object_info)
    problems, missing = validate_api(load_api(name), defs, strict_files=name in RUNNABLE_AS_IS)
    assert not problems, f"{name}:\n" + "\n".join(problems)
    if name in LTX2_WORKFLOWS and not has_ltx2_av():
        # 0.3.75 lacks the LTX-2 audio+video nodes: only those may be missing, and they were
        # checked against workflows/build.py's schemas (themselves checked against 0.29 in
        # the suite's 0.29 run).
        assert missing <= build.LTX2_CORE_TYPES, f"{name}: unexpected missing types {missing - build.LTX2_CORE_TYPES}"
    else:
        assert not missing, f"{name}: node types missing from the server: {missing}"


@pytest.mark.server
@pytest.mark.parametrize("name", sorted(LTX2_WORKFLOWS))
def test_ltx2_node_types_exist_on_server(name, object_info):
    used = {n["class_type"] for n in load_api(name).values()}
    missing = sorted(used - set(object_info))
    if missing and set(missing) <= build.LTX2_CORE_TYPES:
        pytest.skip(f"{NEEDS_029} this ComfyUI has no LTX-2 audio+video nodes ({', '.join(missing)}): here they "
                    f"are checked against workflows/build.py's schemas only; the suite's 0.29 run checks them live.")
    assert not missing


@pytest.mark.server
@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_describe_the_same_graph(name, object_info):
    defs = Defs(object_info)
    from_ui = ui_to_api(load_ui(name), defs)
    api = strip_meta(load_api(name))
    assert same_values(from_ui, api), (f"{name}: UI and API differ\nUI:  {json.dumps(from_ui, sort_keys=True)}\n"
                                       f"API: {json.dumps(api, sort_keys=True)}")
    # Titles too (the frontend exports a node's title as _meta.title).
    for node in load_ui(name)["nodes"]:
        if node.get("title") and node["type"] not in build.VIRTUAL_TYPES:
            assert load_api(name)[str(node["id"])]["_meta"]["title"] == node["title"]
    if name not in LTX2_WORKFLOWS or has_ltx2_av():
        assert not defs.fallback_used


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------
TINY_MODEL = "tiny_ltxv.safetensors"


def tiny_variant(prompt: dict, object_info: dict, nonce: int, steps: int = 3) -> tuple[dict, str]:
    """The same graph on the tiny LTX-Video model: loaders -> UNETLoader(tiny), text encoders ->
    random conditioning, latents -> 64x64x9 video, LTX-2-only nodes bypassed or dropped,
    STG on block 1 and no modality pass (LTX-Video has 2 blocks and no audio), few steps;
    everything that does not feed the sampler is dropped and a SaveLatent is added.
    Returns (prompt, id of the SaveLatent node)."""
    p = copy.deepcopy(strip_meta(prompt))
    seed = 0
    for nid, node in list(p.items()):
        ct, inp = node["class_type"], node["inputs"]
        if ct in ("CheckpointLoaderSimple", "UNETLoader"):
            p[nid] = {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_MODEL, "weight_dtype": "default"}}
        elif ct == "CLIPTextEncode":
            seed += 1
            p[nid] = {"class_type": "CFGPTestConditioning",
                      "inputs": {"seed": seed, "tokens": 8, "channels": 32, "nonce": nonce}}
        elif ct in ("EmptyLatentImage", "EmptyLTXVLatentVideo"):
            p[nid] = {"class_type": "EmptyLTXVLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                                       "batch_size": 1}}
        elif ct == "CFGPolicyBuilder" and inp["preset"] == "ltx2_multimodal":
            for m in ("video", "audio"):
                inp[f"{m}_stg_blocks"], inp[f"{m}_modality"] = "1", 1.0
            for k in ("cfg", "stg", "rescale", "skip_step"):
                inp[f"audio_{k}"] = inp[f"video_{k}"]
        elif ct in ("CFGParallelMultiGPU_LTX2VideoGuidance", "CFGParallelMultiGPU_LTX2AudioGuidance"):
            inp["stg_blocks"], inp["modality"] = "1", 1.0
        elif ct in ("MultiBranchGuider", "LTX2Sampler", "CFGParallelMultiGPU_MultiBranchGuider", "CFGParallelMultiGPU_LTX2Sampler"):
            inp["parallel_size"] = 2
            if ct.endswith("LTX2Sampler"):
                inp["mode"] = "one_stage"  # two_stage needs an LTX-2 upscaler and VAE
                for k in ("stage2_model", "upscale_model", "vae", "decode"):  # decode needs the VAE
                    inp.pop(k, None)
        elif ct in ("BasicScheduler", "LTXVScheduler"):
            inp["steps"] = steps
    videos = [n["inputs"] for n in p.values() if n["class_type"] == "CFGParallelMultiGPU_LTX2VideoGuidance"]
    for n in p.values():  # LTX-Video has no audio: the audio parameters follow the video ones
        if n["class_type"] == "CFGParallelMultiGPU_LTX2AudioGuidance" and videos:
            n["inputs"].update({k: videos[0][k] for k in ("cfg", "stg", "rescale", "skip_step")})
    # LTXVConcatAVLatent (LTX-2 only): its consumers take the video latent directly.
    for nid, node in list(p.items()):
        if node["class_type"] == "LTXVConcatAVLatent":
            video = node["inputs"]["video_latent"]
            for other in p.values():
                for k, v in other["inputs"].items():
                    if v == [nid, 0]:
                        other["inputs"][k] = video
    sampler_id = next(nid for nid, n in p.items()
                      if n["class_type"] in ("SamplerCustomAdvanced", "LTX2Sampler", "CFGParallelMultiGPU_LTX2Sampler"))
    keep, todo = set(), [sampler_id]
    while todo:
        nid = todo.pop()
        if nid not in keep:
            keep.add(nid)
            todo += [v[0] for v in p[nid]["inputs"].values() if isinstance(v, list)]
    p = {nid: n for nid, n in p.items() if nid in keep}
    save_id = str(max(int(k) for k in prompt) + 1)
    p[save_id] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler_id, 0],
                                                         "filename_prefix": f"cfgp_workflows/{nonce}"}}
    problems, missing = validate_api(p, Defs(object_info), strict_files=True)
    assert not problems and not missing, (problems, missing)
    return p, save_id


def _check_latent(server, entry, node_id):
    import torch

    latent = server.saved_latent(entry, node_id=node_id)
    assert latent.shape == (1, 128, 2, 2, 2)  # 64x64x9 -> (1, 128, (9-1)//8+1, 2, 2)
    assert torch.isfinite(latent).all() and latent.abs().max() > 0
    return latent


@pytest.mark.server
def test_tiny_demo_runs(comfy_server):
    entry = comfy_server.run(load_api("tiny_demo"), timeout=240)
    assert entry["status"]["status_str"] == "success"
    _check_latent(comfy_server, entry, "10")


@pytest.mark.server
def test_tiny_ltx2_demo_runs(comfy_server):
    """The LTX-2 audio+video test graph as it is: four passes on two ranks, video and audio saved."""
    import torch

    if not has_ltx2_av():
        pytest.skip(f"{NEEDS_029} the tiny LTX-2 demo uses LTX-2 audio+video nodes")
    entry = comfy_server.run(load_api("tiny_ltx2_demo"), timeout=300)
    assert entry["status"]["status_str"] == "success"
    saved = {nid: comfy_server.saved_latent(entry, node_id=nid) for nid in entry["outputs"]}
    shapes = sorted(tuple(t.shape) for t in saved.values())
    assert shapes == [(1, 8, 9, 16), (1, 128, 2, 2, 2)], shapes  # audio [B,8,T,16], video [B,128,F,H,W]
    assert all(torch.isfinite(t).all() and t.abs().max() > 0 for t in saved.values())


@pytest.mark.server
@pytest.mark.parametrize("name", ["plain_cfg", "ltx2_one_stage", "ltx2_two_stage"])
def test_tiny_variant_runs(name, comfy_server, object_info):
    """The user workflow's own wiring of the pack's nodes, run on the tiny model at parallel
    size 2 (CPU gloo ranks). LTX-2 graphs run the LTX-Video path: no audio, no modality pass;
    the LTX2 Sampler runs one_stage."""
    prompt, save_id = tiny_variant(load_api(name), object_info, nonce=zlib.crc32(name.encode()) % 10_000 + 100)
    entry = comfy_server.run(prompt, timeout=240)
    _check_latent(comfy_server, entry, save_id)


@pytest.mark.server
@pytest.mark.parametrize("name", LEGACY_NAMES)
def test_workflows_saved_with_the_old_ids_still_resolve(name, object_info):
    """Workflows saved before the ids got their pack prefix (tests/data/legacy_workflows: the
    0.1 example files) name CFGPolicyBuilder, MultiBranchGuider, LTX2Sampler: those ids are
    still served (deprecated, so search hides them), with the same widgets."""
    ui = json.loads((LEGACY_DIR / f"{name}.json").read_text())
    used = {n["type"] for n in ui["nodes"]} - build.VIRTUAL_TYPES
    old = used & {"CFGPolicyBuilder", "MultiBranchGuider", "LTX2Sampler", "CFGParallelGroupStatus"}
    assert old, f"{name} holds no old id"
    for node_type in old:
        assert object_info[node_type]["deprecated"] is True
    missing = used - set(object_info)
    assert missing <= (set() if has_ltx2_av() else build.LTX2_CORE_TYPES), missing
    defs = Defs(object_info)
    problems, _ = validate_api(ui_to_api(ui, defs), defs)
    assert not problems, "\n".join(problems)


@pytest.mark.server
def test_tiny_status_demo_saves_the_timeline(comfy_server):
    """Two ranks, then the Group Status in the same prompt: the text names both ranks and their
    branches, the timeline image has one row per rank and is saved by SaveImage."""
    from PIL import Image

    prompt = load_api("tiny_status_demo")
    for node in prompt.values():  # fresh conditioning: the sampler runs (ComfyUI cannot answer from its cache)
        if node["class_type"] == "CFGPTestConditioning":
            node["inputs"]["nonce"] = zlib.crc32(b"status") % 10_000 + 7
    entry = comfy_server.run(prompt, timeout=300)
    status_id = next(nid for nid, n in prompt.items() if n["class_type"] == "CFGParallelMultiGPU_GroupStatus")
    save_id = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveImage")
    text = entry["outputs"][status_id]["text"][0]
    assert "rank 0:" in text and "rank 1:" in text and "cond×4" in text and "negative×4" in text, text
    assert entry["outputs"][status_id]["images"], "the node shows the timeline itself"
    saved = entry["outputs"][save_id]["images"][0]
    path = comfy_server.output_dir / saved.get("subfolder", "") / saved["filename"]
    img = Image.open(path)
    assert img.width == 1024 and img.height > 150


@pytest.mark.server
def test_status_read_in_the_prompt_keeps_the_model_loaded(comfy_server):
    """Group Status with 'after' on the sampler: queueing it alone (what "queue selected output
    nodes" sends: the status node and everything upstream of it) keeps the loader's output in
    ComfyUI's cache, so the next parallel prompt finds the model loaded on every rank."""
    prompt = load_api("tiny_status_demo")
    status_id = next(nid for nid, n in prompt.items() if n["class_type"] == "CFGParallelMultiGPU_GroupStatus")

    def with_nonce(p, nonce):
        p = copy.deepcopy(p)
        for node in p.values():
            if node["class_type"] == "CFGPTestConditioning":
                node["inputs"]["nonce"] = nonce
        return p

    def upstream(p, nid):
        keep, todo = set(), [nid]
        while todo:
            n = todo.pop()
            if n not in keep:
                keep.add(n)
                todo += [v[0] for v in p[n]["inputs"].values() if isinstance(v, list)]
        return {k: v for k, v in p.items() if k in keep}

    base = zlib.crc32(b"keep-loaded") % 10_000 + 20_000
    comfy_server.run(with_nonce(prompt, base), timeout=300)  # loads the model on the ranks (if not already)
    only_status = comfy_server.run(upstream(with_nonce(prompt, base), status_id), timeout=120)
    assert "rank 1:" in only_status["outputs"][status_id]["text"][0]
    again = comfy_server.run(with_nonce(prompt, base + 1), timeout=300)  # new conditioning: the sampler runs
    text = again["outputs"][status_id]["text"][0]
    assert "cond×4" in text and "negative×4" in text, text
    assert "model loaded for this job" not in text, text


@pytest.mark.server
def test_a_status_only_prompt_then_the_model_is_not_loaded_again(comfy_server):
    """Group Status queued on its own (nothing upstream): ComfyUI drops the loader's output and
    loads the file again for the next prompt. On 0.29 the loader leaves a recipe, so the ranks
    recognise the same file with the same options and keep the model (and, patches compared by
    content, the patched model) they hold. On 0.3.75 a reloaded model has no identity but the
    Python object, so the ranks load it again (README, Group Status)."""
    from support.paths import has_ltx2_av

    if not has_ltx2_av():  # 0.29 and later: loaders leave a recipe
        pytest.skip(f"{NEEDS_029} 0.3.75's loaders leave no recipe: a reloaded file is a new model there")
    prompt = load_api("tiny_status_demo")
    status_id = next(nid for nid, n in prompt.items() if n["class_type"] == "CFGParallelMultiGPU_GroupStatus")

    def with_nonce(nonce):
        p = copy.deepcopy(prompt)
        for node in p.values():
            if node["class_type"] == "CFGPTestConditioning":
                node["inputs"]["nonce"] = nonce
        return p

    base = zlib.crc32(b"status-alone") % 10_000 + 40_000
    comfy_server.run(with_nonce(base), timeout=300)
    alone = {status_id: {"class_type": prompt[status_id]["class_type"], "inputs": {"shutdown": False}}}
    comfy_server.run(alone, timeout=120)
    again = comfy_server.run(with_nonce(base + 1), timeout=300)
    text = again["outputs"][status_id]["text"][0]
    assert "cond×4" in text and "negative×4" in text, text
    assert "model loaded for this job" not in text, text


@pytest.mark.server
def test_tiny_ltx2_demo_with_the_sequence_split(comfy_server):
    """The same LTX-2 audio+video graph with the node's sequence_split at 2 (each of the four
    passes split over both ranks: layout 1 x 2) against off (2 x 1, bit-exact to one GPU): equal
    within rounding, and the layout is in the ComfyUI console."""
    import torch

    if not has_ltx2_av():
        pytest.skip(f"{NEEDS_029} the tiny LTX-2 demo uses LTX-2 audio+video nodes")
    results = {}
    for split in ("off", "2"):
        prompt = load_api("tiny_ltx2_demo")
        nodes = [n for n in prompt.values() if "parallel_size" in n["inputs"]]
        assert nodes, "the demo has a node with parallel_size"
        for node in nodes:
            node["inputs"]["sequence_split"] = split
        entry = comfy_server.run(prompt, timeout=300)
        results[split] = {nid: comfy_server.saved_latent(entry, node_id=nid) for nid in entry["outputs"]}
    for nid, whole in results["off"].items():
        split = results["2"][nid]
        rel = float((split.double() - whole.double()).norm() / whole.double().norm())
        assert rel <= 1e-5, (nid, rel)
        print(f"node {nid}: relative L2 split vs off = {rel:.2e}")
    assert "1 branch group(s) x sequence degree 2" in comfy_server.log_text(), comfy_server.log_tail()
