"""Read the graph blueprints that ship with a ComfyUI installation (``blueprints/*.json``, 0.29).

Tests take node types and settings from them at run time (never copied into this repo):
the blueprint is a UI-format workflow whose graph lives in ``definitions.subgraphs[0]``
(nodes with ``widgets_values`` and ``inputs[].link``; links with origin and target ids).
"""
from __future__ import annotations

import json
from pathlib import Path

from .paths import COMFYUI_DIR


class Blueprint:
    """One blueprint's (first) subgraph: look nodes up by type and follow input links."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        data = json.loads(self.path.read_text())
        subgraphs = (data.get("definitions") or {}).get("subgraphs") or []
        graph = subgraphs[0] if subgraphs else data
        self.nodes = {n["id"]: n for n in graph["nodes"]}
        self.links = {}
        for link in graph.get("links", []):
            if isinstance(link, dict):
                self.links[link["id"]] = link["origin_id"]
            else:  # [id, origin_id, origin_slot, target_id, target_slot, type]
                self.links[link[0]] = link[1]

    def of_type(self, node_type: str) -> list[dict]:
        return [n for n in self.nodes.values() if n.get("type") == node_type]

    def upstream(self, node: dict, input_name: str) -> dict | None:
        """The node feeding ``input_name`` of ``node``, or None."""
        for inp in node.get("inputs", []):
            if inp.get("name") == input_name and inp.get("link") is not None:
                return self.nodes.get(self.links.get(inp["link"]))
        return None

    def upstream_of_type(self, node: dict, node_type: str, max_depth: int = 6) -> dict | None:
        """The first node of that type found walking up from ``node`` (breadth first)."""
        frontier = [node]
        for _ in range(max_depth):
            nxt = []
            for n in frontier:
                for inp in n.get("inputs", []):
                    up = self.nodes.get(self.links.get(inp.get("link")))
                    if up is None:
                        continue
                    if up.get("type") == node_type:
                        return up
                    nxt.append(up)
            frontier = nxt
        return None

    def samplings(self) -> list[dict]:
        """Every SamplerCustomAdvanced fed by ManualSigmas, longest schedule first (stage 1 of a
        two-stage LTX blueprint first): {"node", "sampler" (the sampler node), "sigmas" (text)}."""
        found = []
        for node in self.of_type("SamplerCustomAdvanced"):
            sigmas = self.upstream(node, "sigmas")
            sampler = self.upstream(node, "sampler")
            if sigmas and sampler and sigmas.get("type") == "ManualSigmas":
                found.append({"node": node, "sampler": sampler, "sigmas": str(sigmas["widgets_values"][0])})
        if not found:
            raise LookupError(f"{self.path.name}: no SamplerCustomAdvanced with ManualSigmas")
        return sorted(found, key=lambda f: -len(f["sigmas"].split(",")))


def api_node(node: dict, object_info: dict) -> dict:
    """A blueprint node without links as an API-format node: its widget values by input name
    (in the server's input order; widget inputs only)."""
    order = object_info.get("input_order") or {k: list(v) for k, v in object_info["input"].items()}
    names = [n for part in ("required", "optional") for n in order.get(part, [])]
    linked = {i["name"] for i in node.get("inputs", []) if "widget" not in i}
    widgets = [n for n in names if n not in linked]
    return {"class_type": node["type"], "inputs": dict(zip(widgets, node.get("widgets_values") or []))}


def find_blueprint(pattern: str, comfyui_dir=None) -> Path | None:
    """The first ``blueprints/<pattern>`` file of that ComfyUI, or None."""
    folder = Path(comfyui_dir or COMFYUI_DIR) / "blueprints"
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return matches[0] if matches else None
