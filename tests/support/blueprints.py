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

    def stage1_sampling(self) -> dict:
        """The SamplerCustomAdvanced with the longest ManualSigmas schedule (stage 1 of a
        two-stage LTX blueprint) and its sampler name and sigmas string."""
        best = None
        for node in self.of_type("SamplerCustomAdvanced"):
            sigmas = self.upstream(node, "sigmas")
            sampler = self.upstream(node, "sampler")
            if not (sigmas and sampler and sigmas.get("type") == "ManualSigmas"):
                continue
            text = str(sigmas["widgets_values"][0])
            if best is None or len(text.split(",")) > len(best["sigmas"].split(",")):
                best = {"node": node, "sampler": sampler["widgets_values"][0], "sigmas": text}
        if best is None:
            raise LookupError(f"{self.path.name}: no SamplerCustomAdvanced with ManualSigmas and KSamplerSelect")
        return best


def find_blueprint(pattern: str, comfyui_dir=None) -> Path | None:
    """The first ``blueprints/<pattern>`` file of that ComfyUI, or None."""
    folder = Path(comfyui_dir or COMFYUI_DIR) / "blueprints"
    matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return matches[0] if matches else None
