#!/usr/bin/env python3
"""Build the example workflows from one description (workflows/graphs.py).

    python workflows/build.py          # write workflows/api, workflows/ui, example_workflows
    python workflows/build.py --check  # exit 1 if a file on disk differs from what it would write

Each graph in graphs.py is written twice, from the same objects, so the two cannot drift:
- ``workflows/api/<name>.json``: API format (the body of POST /prompt under "prompt");
- ``workflows/ui/<name>.json``: what the web graph saves (LiteGraph 0.4: nodes with pos,
  size, inputs/outputs, widgets_values; links; groups; a Note node).
Graphs marked ``example=True`` are also copied to ``example_workflows/<title>.json`` (where
ComfyUI's template browser looks for a custom node pack's examples; it shows the file name as
the card's title and ``<title>.jpg`` beside it as the thumbnail). Those are generated copies,
not symlinks: ComfyUI serves that folder with aiohttp's static route, which refuses files
whose real path lies outside the folder, and symlinks break on Windows checkouts and in
registry archives.

The node schemas below (input order, sockets vs widgets, output types) are what the
layout needs; tests/test_workflows.py checks them against a live server's /object_info.
This file is standard library only; graphs.py reads the official LTX-2 values from
cfg_runtime.guidance.ltx (torch), so run it with the project's Python (.venv/bin/python).
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
API_DIR = HERE / "api"
UI_DIR = HERE / "ui"
EXAMPLES_DIR = REPO / "example_workflows"
PACK_ID = "comfyui-cfg-parallel"  # [project] name in pyproject.toml (the registry id)

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Nodes that exist only in the web frontend (never in /object_info, never in a prompt).
VIRTUAL_TYPES = {"Note", "MarkdownNote"}
PACK_TYPES = {"CFGParallelMultiGPU_PolicyBuilder", "CFGParallelMultiGPU_LTX2VideoGuidance", "CFGParallelMultiGPU_LTX2AudioGuidance",
              "CFGParallelMultiGPU_MultiBranchGuider", "CFGParallelMultiGPU_LTX2Sampler", "CFGParallelMultiGPU_GroupStatus",
              "CFGParallelMultiGPU_Model", "CFGParallelMultiGPU_VAEDecode",
              # the ids before 0.2 (deprecated aliases; the tiny demo keeps them)
              "CFGPolicyBuilder", "MultiBranchGuider", "LTX2Sampler", "CFGParallelGroupStatus"}
# Core node types of LTX-2-era ComfyUI (audio+video LTX) that ComfyUI 0.3.75 lacks.
LTX2_CORE_TYPES = {"LTXAVTextEncoderLoader", "LTXVAudioVAELoader", "LTXVEmptyLatentAudio", "LTXVConcatAVLatent",
                   "LTXVSeparateAVLatent", "LTXVAudioVAEDecode", "LTXVLatentUpsampler"}


# ---------------------------------------------------------------------------------------
# Node schemas: "name:TYPE" in the server's input order; "?" = optional input; "!" = the
# frontend adds a "control after generate" value after this widget. Outputs: (name, type).
# "^" = a widget type taken as a socket only (forceInput).
# Output nodes list no outputs (newer ComfyUI adds pass-through outputs; unused here).
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    name: str
    type: str
    optional: bool = False
    control: bool = False
    socket: bool = False  # a widget type the node takes as a socket only (forceInput)

    @property
    def is_widget(self) -> bool:
        return not self.socket and any(t in WIDGET_TYPES for t in self.type.split(","))


@dataclass(frozen=True)
class Schema:
    inputs: tuple[Input, ...]
    outputs: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, inputs: str, outputs=()) -> "Schema":
        parsed = []
        for tok in inputs.split():
            optional = tok.startswith("?")
            control = tok.endswith("!")
            socket = tok.endswith("^")
            name, typ = tok.strip("?!^").split(":")
            parsed.append(Input(name, typ, optional, control, socket))
        return cls(tuple(parsed), tuple(outputs))

    def input(self, name: str) -> Input:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def sockets(self) -> list[Input]:
        """Socket inputs in the frontend's slot order: required sockets, then optional ones."""
        socks = [i for i in self.inputs if not i.is_widget]
        return [i for i in socks if not i.optional] + [i for i in socks if i.optional]

    @property
    def widgets(self) -> list[Input]:
        return [i for i in self.inputs if i.is_widget]

    @property
    def ui_inputs(self) -> list[Input]:
        """The frontend's serialised input list: sockets first, then one entry per widget."""
        return self.sockets + self.widgets


def _s(inputs, *outputs):
    return Schema.parse(inputs, outputs)


SCHEMAS: dict[str, Schema] = {
    # core, ComfyUI 0.3.75 and later
    "CheckpointLoaderSimple": _s("ckpt_name:COMBO", ("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")),
    "UNETLoader": _s("unet_name:COMBO weight_dtype:COMBO", ("MODEL", "MODEL")),
    "LoraLoaderModelOnly": _s("model:MODEL lora_name:COMBO strength_model:FLOAT", ("MODEL", "MODEL")),
    "LatentUpscaleModelLoader": _s("model_name:COMBO", ("LATENT_UPSCALE_MODEL", "LATENT_UPSCALE_MODEL")),
    "CLIPTextEncode": _s("text:STRING clip:CLIP", ("CONDITIONING", "CONDITIONING")),
    "EmptyLatentImage": _s("width:INT height:INT batch_size:INT", ("LATENT", "LATENT")),
    "EmptyLTXVLatentVideo": _s("width:INT height:INT length:INT batch_size:INT", ("LATENT", "LATENT")),
    "LTXVConditioning": _s("positive:CONDITIONING negative:CONDITIONING frame_rate:FLOAT",
                           ("positive", "CONDITIONING"), ("negative", "CONDITIONING")),
    "LTXVScheduler": _s("steps:INT max_shift:FLOAT base_shift:FLOAT stretch:BOOLEAN terminal:FLOAT ?latent:LATENT",
                        ("SIGMAS", "SIGMAS")),
    "RandomNoise": _s("noise_seed:INT!", ("NOISE", "NOISE")),
    "KSamplerSelect": _s("sampler_name:COMBO", ("SAMPLER", "SAMPLER")),
    "BasicScheduler": _s("model:MODEL scheduler:COMBO steps:INT denoise:FLOAT", ("SIGMAS", "SIGMAS")),
    "SamplerCustomAdvanced": _s("noise:NOISE guider:GUIDER sampler:SAMPLER sigmas:SIGMAS latent_image:LATENT",
                                ("output", "LATENT"), ("denoised_output", "LATENT")),
    "VAEDecode": _s("samples:LATENT vae:VAE", ("IMAGE", "IMAGE")),
    "VAEDecodeTiled": _s("samples:LATENT vae:VAE tile_size:INT overlap:INT temporal_size:INT temporal_overlap:INT",
                         ("IMAGE", "IMAGE")),
    "CreateVideo": _s("images:IMAGE fps:FLOAT ?audio:AUDIO", ("VIDEO", "VIDEO")),
    "SaveVideo": _s("video:VIDEO filename_prefix:STRING format:COMBO codec:COMBO"),
    "SaveImage": _s("images:IMAGE filename_prefix:STRING"),
    "SaveLatent": _s("samples:LATENT filename_prefix:STRING"),
    "PreviewAny": _s("source:*"),
    "KSampler": _s("model:MODEL seed:INT! steps:INT cfg:FLOAT sampler_name:COMBO scheduler:COMBO "
                   "positive:CONDITIONING negative:CONDITIONING latent_image:LATENT denoise:FLOAT", ("LATENT", "LATENT")),
    "KSamplerAdvanced": _s("model:MODEL add_noise:COMBO noise_seed:INT! steps:INT cfg:FLOAT sampler_name:COMBO "
                           "scheduler:COMBO positive:CONDITIONING negative:CONDITIONING latent_image:LATENT "
                           "start_at_step:INT end_at_step:INT return_with_leftover_noise:COMBO", ("LATENT", "LATENT")),
    "ModelSamplingSD3": _s("model:MODEL shift:FLOAT", ("MODEL", "MODEL")),
    "PerturbedAttentionGuidance": _s("model:MODEL scale:FLOAT", ("MODEL", "MODEL")),
    "CLIPLoader": _s("clip_name:COMBO type:COMBO ?device:COMBO", ("CLIP", "CLIP")),
    "VAELoader": _s("vae_name:COMBO", ("VAE", "VAE")),
    "EmptyHunyuanLatentVideo": _s("width:INT height:INT length:INT batch_size:INT", ("LATENT", "LATENT")),
    # core, LTX-2 era only (LTX2_CORE_TYPES)
    "LTXAVTextEncoderLoader": _s("text_encoder:COMBO ckpt_name:COMBO device:COMBO", ("CLIP", "CLIP")),
    "LTXVAudioVAELoader": _s("ckpt_name:COMBO", ("Audio VAE", "VAE")),
    "LTXVEmptyLatentAudio": _s("frames_number:INT frame_rate:FLOAT,INT batch_size:INT audio_vae:VAE",
                               ("Latent", "LATENT")),
    "LTXVConcatAVLatent": _s("video_latent:LATENT audio_latent:LATENT", ("latent", "LATENT")),
    "LTXVSeparateAVLatent": _s("av_latent:LATENT", ("video_latent", "LATENT"), ("audio_latent", "LATENT")),
    "LTXVAudioVAEDecode": _s("samples:LATENT audio_vae:VAE", ("Audio", "AUDIO")),
    "PrimitiveStringMultiline": _s("value:STRING", ("STRING", "STRING")),
    # this pack
    "CFGParallelMultiGPU_PolicyBuilder": _s(
        "preset:COMBO cfg:FLOAT guidance_rescale:FLOAT cfg_zero_star:BOOLEAN zero_init_steps:INT "
        "?video:CFGP_LTX2_VIDEO_GUIDANCE ?audio:CFGP_LTX2_AUDIO_GUIDANCE ?custom_branches:STRING^",
        ("policy", "CFG_POLICY"), ("branches", "STRING")),
    "CFGParallelMultiGPU_LTX2VideoGuidance": _s(
        "cfg:FLOAT stg:FLOAT stg_blocks:STRING modality:FLOAT rescale:FLOAT skip_step:INT",
        ("video", "CFGP_LTX2_VIDEO_GUIDANCE")),
    "CFGParallelMultiGPU_LTX2AudioGuidance": _s(
        "cfg:FLOAT stg:FLOAT stg_blocks:STRING modality:FLOAT rescale:FLOAT skip_step:INT",
        ("audio", "CFGP_LTX2_AUDIO_GUIDANCE")),
    "CFGParallelMultiGPU_MultiBranchGuider": _s(
        "model:MODEL positive:CONDITIONING policy:CFG_POLICY parallel_size:INT devices:STRING plan:COMBO "
        "keep_model_loaded:BOOLEAN step_timeout_s:FLOAT ?negative:CONDITIONING ?sequence_split:COMBO "
        "?batch_split:COMBO", ("GUIDER", "GUIDER")),
    "CFGParallelMultiGPU_LTX2Sampler": _s(
        "model:MODEL positive:CONDITIONING negative:CONDITIONING policy:CFG_POLICY latent:LATENT sampler:SAMPLER "
        "sigmas:SIGMAS noise_seed:INT! mode:COMBO parallel_size:INT devices:STRING stage2_sigmas:STRING "
        "?stage2_model:MODEL ?upscale_model:LATENT_UPSCALE_MODEL ?vae:VAE ?sequence_split:COMBO ?batch_split:COMBO "
        "?decode:COMBO ?tile_size:INT ?overlap:INT ?temporal_size:INT ?temporal_overlap:INT",
        ("latent", "LATENT"), ("stage1_latent", "LATENT"), ("images", "IMAGE")),
    "CFGParallelMultiGPU_GroupStatus": _s("shutdown:BOOLEAN ?after:*", ("status", "STRING"), ("timeline", "IMAGE")),
    # this pack, the ids before 0.2 (deprecated aliases, still registered; the tiny demo uses them)
    "CFGPolicyBuilder": _s(
        "preset:COMBO cfg:FLOAT guidance_rescale:FLOAT cfg_zero_star:BOOLEAN zero_init_steps:INT "
        "video_cfg:FLOAT video_stg:FLOAT video_stg_blocks:STRING video_modality:FLOAT video_rescale:FLOAT "
        "video_skip_step:INT audio_cfg:FLOAT audio_stg:FLOAT audio_stg_blocks:STRING audio_modality:FLOAT "
        "audio_rescale:FLOAT audio_skip_step:INT custom_branches:STRING",
        ("policy", "CFG_POLICY"), ("branches", "STRING")),
    "MultiBranchGuider": _s(
        "model:MODEL positive:CONDITIONING policy:CFG_POLICY parallel_size:INT devices:STRING plan:COMBO "
        "keep_model_loaded:BOOLEAN step_timeout_s:FLOAT ?negative:CONDITIONING ?sequence_split:COMBO "
        "?batch_split:COMBO", ("GUIDER", "GUIDER")),
    "LTX2Sampler": _s(
        "model:MODEL positive:CONDITIONING negative:CONDITIONING policy:CFG_POLICY latent:LATENT sampler:SAMPLER "
        "sigmas:SIGMAS noise_seed:INT! mode:COMBO parallel_size:INT devices:STRING stage2_sigmas:STRING "
        "?stage2_model:MODEL ?upscale_model:LATENT_UPSCALE_MODEL ?vae:VAE ?sequence_split:COMBO ?batch_split:COMBO "
        "?decode:COMBO ?tile_size:INT ?overlap:INT ?temporal_size:INT ?temporal_overlap:INT",
        ("latent", "LATENT"), ("stage1_latent", "LATENT"), ("images", "IMAGE")),
    "CFGParallelMultiGPU_Model": _s("model:MODEL parallel_size:INT devices:STRING ?policy:CFG_POLICY ?sequence_split:COMBO ?batch_split:COMBO",
                                    ("MODEL", "MODEL")),
    "CFGParallelMultiGPU_VAEDecode": _s("samples:LATENT vae:VAE tile_size:INT overlap:INT temporal_size:INT "
                                        "temporal_overlap:INT parallel_size:INT devices:STRING", ("IMAGE", "IMAGE")),
    # test-only node pack (devkit/comfy_test_nodes)
    "CFGPTestConditioning": _s("seed:INT! tokens:INT channels:INT ?nonce:INT", ("CONDITIONING", "CONDITIONING")),
}

# Widgets whose text area the frontend draws taller than one line (multiline STRING).
MULTILINE = {("CLIPTextEncode", "text"), ("CFGPolicyBuilder", "custom_branches"), ("PrimitiveStringMultiline", "value")}

# ---------------------------------------------------------------------------------------
# Graph description
# ---------------------------------------------------------------------------------------
SLOT_H, WIDGET_H, TITLE_H = 20, 24, 30  # LiteGraph metrics of ComfyUI's frontend
MULTILINE_H = 84
PACK_COLOR = ("#223322", "#335533")  # title / body colour of this pack's nodes (green)
NOTE_COLOR = ("#432", "#653")


@dataclass(frozen=True)
class Out:
    node: "Node"
    slot: int

    @property
    def type(self) -> str:
        return self.node.schema.outputs[self.slot][1]


@dataclass(eq=False)
class Node:
    id: int
    type: str
    title: str | None
    values: dict  # input name -> literal widget value or Out (a link)
    column: int
    width: int
    height: int | None
    group: str | None
    pos: tuple[float, float] | None = None
    size: tuple[float, float] | None = None

    @property
    def schema(self) -> Schema:
        return SCHEMAS[self.type]

    @property
    def virtual(self) -> bool:
        return self.type in VIRTUAL_TYPES

    def out(self, which=0) -> Out:
        outs = self.schema.outputs
        if isinstance(which, str):
            names = [n for n, _ in outs]
            if which not in names:
                raise KeyError(f"{self.type} has no output {which!r} (has {names})")
            which = names.index(which)
        if not 0 <= which < len(outs):
            raise IndexError(f"{self.type} has no output {which}")
        return Out(self, which)

    def computed_size(self) -> tuple[float, float]:
        if self.virtual:
            return (self.width, self.height or 200)
        sch = self.schema
        rows = max(len(sch.sockets), len(sch.outputs), 1)
        h = rows * SLOT_H + 6
        widgets = [w for w in sch.widgets if not isinstance(self.values.get(w.name), Out)]
        if widgets:
            h += sum(MULTILINE_H if (self.type, w.name) in MULTILINE else WIDGET_H * (2 if w.control else 1)
                     for w in widgets) + 8
        return (self.width, max(h, self.height or 0))


@dataclass
class Group:
    title: str
    color: str
    nodes: list = field(default_factory=list)
    bounding: tuple | None = None


class Graph:
    """A workflow: nodes in columns (left to right), grouped, with one Note."""

    def __init__(self, name: str, title: str, example: bool = True):
        self.name, self.title, self.example = name, title, example
        self.nodes: list[Node] = []
        self.groups: dict[str, Group] = {}
        self._group: str | None = None
        self._column = 0

    # -- building -------------------------------------------------------------------
    def column(self, index: int):
        self._column = index
        return self

    def group(self, title: str, color: str = "#3f789e"):
        """Nodes added after this call belong to the group ``title`` (None: no group)."""
        if title is not None and title not in self.groups:
            self.groups[title] = Group(title, color)
        self._group = title
        return self

    def node(self, type_: str, *, id: int | None = None, title: str | None = None, w: int = 300,
             h: int | None = None, **values) -> Node:
        """Add a node. ``values``: input name -> widget value, or ``other.out(...)`` for a link.
        ``w``/``h``: box width and minimum height (the height grows to fit the widgets)."""
        if type_ not in SCHEMAS and type_ not in VIRTUAL_TYPES:
            raise KeyError(f"no schema for {type_}; add it to SCHEMAS")
        nid = id if id is not None else max((n.id for n in self.nodes), default=0) + 1
        if any(n.id == nid for n in self.nodes):
            raise ValueError(f"{self.name}: node id {nid} used twice")
        if type_ not in VIRTUAL_TYPES:
            schema = SCHEMAS[type_]
            known = {i.name for i in schema.inputs}
            unknown = set(values) - known
            if unknown:
                raise KeyError(f"{type_} has no input(s) {sorted(unknown)}")
            for i in schema.inputs:
                v = values.get(i.name)
                if v is None and not i.optional:
                    raise ValueError(f"{self.name}: {type_} (node {nid}) needs input {i.name!r}")
                if isinstance(v, Out) and not i.is_widget and not _types_match(v.type, i.type):
                    raise TypeError(f"{self.name}: {v.node.type}.{v.type} -> {type_}.{i.name} ({i.type})")
                if v is not None and not isinstance(v, Out) and not i.is_widget:
                    raise TypeError(f"{self.name}: {type_}.{i.name} is a socket; give it a node output")
        node = Node(nid, type_, title, dict(values), self._column, w, h, self._group)
        self.nodes.append(node)
        if self._group is not None:
            self.groups[self._group].nodes.append(node)
        return node

    def note(self, text: str, *, id: int | None = None, w: int = 420, h: int = 400, title: str = "Note") -> Node:
        n = self.node("Note", id=id, title=title, w=w, h=h)
        n.values = {"text": text.strip() + "\n"}
        return n

    # -- derived --------------------------------------------------------------------
    def links(self) -> list[tuple[int, Out, Node, str]]:
        """(link id, origin, target node, target input name), in a stable order."""
        out, lid = [], 0
        for node in self.nodes:
            if node.virtual:
                continue
            for inp in node.schema.ui_inputs:
                v = node.values.get(inp.name)
                if isinstance(v, Out):
                    lid += 1
                    out.append((lid, v, node, inp.name))
        return out

    def execution_order(self) -> dict[int, int]:
        deps = {n.id: set() for n in self.nodes}
        for _, origin, target, _ in self.links():
            deps[target.id].add(origin.node.id)
        order, done = {}, set()
        while len(done) < len(self.nodes):
            for n in self.nodes:  # creation order breaks ties
                if n.id not in done and deps[n.id] <= done:
                    order[n.id] = len(order)
                    done.add(n.id)
                    break
            else:
                raise ValueError(f"{self.name}: cycle in the graph")
        return order

    def layout(self, col_gap: int = 60, node_gap: int = 30, pad: int = 12, group_title: int = 46):
        """Columns left to right; each column stacks its nodes; groups wrap their nodes."""
        columns = sorted({n.column for n in self.nodes})
        x = 0.0
        for c in columns:
            members = [n for n in self.nodes if n.column == c]
            width = max(n.computed_size()[0] for n in members)
            start = object()
            y, prev_group = 0.0, start
            for n in members:
                if n.group != prev_group:
                    if prev_group is not start and prev_group is not None:
                        y += pad + node_gap  # close the previous group's box
                    if n.group is not None:
                        y += group_title
                    prev_group = n.group
                n.size = n.computed_size()
                n.pos = (x + pad, y + TITLE_H)
                y = n.pos[1] + n.size[1] + node_gap
            x += width + 2 * pad + col_gap
        for g in self.groups.values():
            left = min(n.pos[0] for n in g.nodes) - pad
            top = min(n.pos[1] - TITLE_H for n in g.nodes) - group_title + 6
            right = max(n.pos[0] + n.size[0] for n in g.nodes) + pad
            bottom = max(n.pos[1] + n.size[1] for n in g.nodes) + pad
            g.bounding = (left, top, right - left, bottom - top)

    # -- output ---------------------------------------------------------------------
    def to_api(self) -> dict:
        prompt = {}
        for node in self.nodes:
            if node.virtual:
                continue
            inputs = {}
            for inp in node.schema.inputs:
                v = node.values.get(inp.name)
                if v is None:
                    continue
                inputs[inp.name] = [str(v.node.id), v.slot] if isinstance(v, Out) else v
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                    "_meta": {"title": node.title or node.type}}
        return prompt

    def to_ui(self) -> dict:
        self.layout()
        links = self.links()
        order = self.execution_order()
        out_links: dict[tuple[int, int], list[int]] = {}
        in_link: dict[tuple[int, str], int] = {}
        for lid, origin, target, name in links:
            out_links.setdefault((origin.node.id, origin.slot), []).append(lid)
            in_link[(target.id, name)] = lid
        nodes = []
        for node in self.nodes:
            d = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                 "order": order[node.id], "mode": 0}
            if node.virtual:
                d.update(inputs=[], outputs=[], properties={}, widgets_values=[node.values["text"]])
                d["color"], d["bgcolor"] = NOTE_COLOR
            else:
                sch = node.schema
                inputs = []
                for inp in sch.ui_inputs:
                    entry = {"name": inp.name, "type": inp.type}
                    if inp.is_widget:
                        entry["widget"] = {"name": inp.name}
                    elif inp.optional:
                        entry["shape"] = 7  # the frontend's hollow dot for optional sockets
                    entry["link"] = in_link.get((node.id, inp.name))
                    inputs.append(entry)
                outputs = [{"name": name, "type": typ, "links": out_links.get((node.id, slot)), "slot_index": slot}
                           for slot, (name, typ) in enumerate(sch.outputs)]
                widgets_values = []
                for w in sch.widgets:
                    v = node.values.get(w.name)
                    if isinstance(v, Out):
                        v = None  # a widget converted to an input keeps a placeholder value
                    if v is None and w.optional and not any(node.values.get(x.name) is not None
                                                            for x in sch.widgets[sch.widgets.index(w):]):
                        break  # trailing unset optional widgets: the frontend uses their defaults
                    widgets_values.append(v)
                    if w.control:
                        widgets_values.append("fixed")  # reproducible: never re-randomise the seed
                props = {"Node name for S&R": node.type}
                if node.type in PACK_TYPES:
                    props["cnr_id"] = PACK_ID  # lets ComfyUI-Manager offer to install the pack
                d.update(inputs=inputs, outputs=outputs, properties=props)
                if widgets_values:
                    d["widgets_values"] = widgets_values
                if node.type in PACK_TYPES:
                    d["color"], d["bgcolor"] = PACK_COLOR
            if node.title:
                d["title"] = node.title
            nodes.append(d)
        groups = [{"id": i + 1, "title": g.title, "bounding": [round(v, 1) for v in g.bounding], "color": g.color,
                   "font_size": 20, "flags": {}} for i, g in enumerate(self.groups.values())]
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/workflows/{self.name}")),
            "revision": 0,
            "last_node_id": max(n.id for n in self.nodes),
            "last_link_id": len(links),
            "nodes": nodes,
            "links": [[lid, o.node.id, o.slot, t.id, t.schema.ui_inputs.index(t.schema.input(name)), o.type]
                      for lid, o, t, name in links],
            "groups": groups,
            "config": {},
            "extra": {"cfg_parallel": {"title": self.title, "api_format": f"workflows/api/{self.name}.json",
                                       "generated_by": "workflows/build.py (edit workflows/graphs.py)"}},
            "version": 0.4,
        }


def _types_match(out_type: str, in_type: str) -> bool:
    """ComfyUI's link rule: equal, '*' on either side, or a shared member of comma lists."""
    if "*" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------
def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


GRAPH_FILES = ("graphs.py", "graphs_model_node.py")  # each defines all_graphs()


def load_graphs_module(file: str = "graphs.py"):
    """Import workflows/<file>; its ``from build import Graph`` gets this very module
    (whatever else is called ``build`` on sys.path, e.g. PyPA's build tool)."""
    import importlib.util

    if str(REPO) not in sys.path:  # graphs.py imports cfg_runtime (the official LTX-2 values)
        sys.path.append(str(REPO))
    spec = importlib.util.spec_from_file_location(f"cfgp_workflow_{Path(file).stem}", HERE / file)
    mod = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("build")
    sys.modules["build"] = sys.modules[__name__]
    try:
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("build", None)
        else:
            sys.modules["build"] = saved
    return mod


def rendered_files(graphs=None) -> dict[Path, str]:
    """Every file this script owns -> its content."""
    if graphs is None:
        graphs = [g for file in GRAPH_FILES for g in load_graphs_module(file).all_graphs()]
    files = {}
    for g in graphs:
        files[API_DIR / f"{g.name}.json"] = dumps(g.to_api())
        ui = dumps(g.to_ui())
        files[UI_DIR / f"{g.name}.json"] = ui
        if g.example:
            files[EXAMPLES_DIR / f"{g.title}.json"] = ui
    return files


def stale_files(files: dict[Path, str]) -> list[str]:
    """Files that differ from what would be written, and stray JSON files in the owned folders."""
    bad = [str(p.relative_to(REPO)) for p, text in files.items()
           if not p.is_file() or p.read_text(encoding="utf-8") != text]
    for folder in (API_DIR, UI_DIR, EXAMPLES_DIR):
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            if p not in files:
                bad.append(f"{p.relative_to(REPO)} (not generated by workflows/build.py)")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when something is stale")
    args = ap.parse_args(argv)
    files = rendered_files()
    if args.check:
        bad = stale_files(files)
        for b in bad:
            print(f"stale: {b}", file=sys.stderr)
        if bad:
            print("run: python workflows/build.py", file=sys.stderr)
        return 1 if bad else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    for b in stale_files(files):
        print(f"warning: {b}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
