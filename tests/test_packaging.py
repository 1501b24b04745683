"""Registry-ready packaging: what the Comfy registry and ComfyUI-Manager read from the pack.

- pyproject.toml: a LICENSE file, no dependency that ComfyUI already provides (an
  installer could swap a CUDA torch for another build), requires-comfyui, classifiers.
- .comfyignore keeps developer material (tests, benchmarks, scripts, CI) out of the
  archive that `comfy node pack` builds from the git-tracked files.
- nodes/__init__.py spells the node mappings as literals, so ComfyUI-Manager's scanner
  (which reads the file, it does not import it) finds every node name; they equal what
  ComfyUI registers (checked against the live server in tests/test_workflows.py).
"""
from __future__ import annotations

import ast
import fnmatch
import subprocess
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROVIDED_BY_COMFYUI = {"torch", "torchvision", "torchaudio", "safetensors", "numpy", "pillow"}
NEW_IDS = {"CFGParallelMultiGPU_PolicyBuilder", "CFGParallelMultiGPU_LTX2VideoGuidance",
           "CFGParallelMultiGPU_LTX2AudioGuidance", "CFGParallelMultiGPU_MultiBranchGuider",
           "CFGParallelMultiGPU_LTX2Sampler", "CFGParallelMultiGPU_GroupStatus", "CFGParallelMultiGPU_Model",
           "CFGParallelMultiGPU_VAEDecode"}
OLD_IDS = {"CFGPolicyBuilder", "MultiBranchGuider", "LTX2Sampler", "CFGParallelGroupStatus"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_is_registry_ready():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert project["license"] == {"file": "LICENSE"} and (REPO / "LICENSE").read_text().startswith("MIT License")
    names = {d.split(";")[0].split("[")[0].strip().split("=")[0].split(">")[0].split("<")[0].lower()
             for d in project["dependencies"]}
    assert not names & PROVIDED_BY_COMFYUI, f"ComfyUI provides these already: {names & PROVIDED_BY_COMFYUI}"
    # ComfyUI-Manager installs requirements.txt: the same dependencies
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(project["dependencies"])
    assert comfy["requires-comfyui"].startswith(">=")
    assert "Operating System :: POSIX :: Linux" in project["classifiers"]
    assert {"Repository", "Documentation", "Bug Tracker"} <= set(project["urls"])
    assert comfy["PublisherId"] and comfy["DisplayName"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """gitignore's rules for the patterns used here (comfy-cli reads .comfyignore with pathspec's
    gitwildmatch): '/x' is anchored at the top, 'x' matches at any depth, 'x/' a folder."""
    parts = path.split("/")
    for pat in patterns:
        anchored, folder = pat.startswith("/"), pat.endswith("/")
        body = pat.strip("/")
        starts = [0] if anchored or "/" in body else range(len(parts))
        n = body.count("/") + 1
        for i in starts:
            candidate = "/".join(parts[i:i + n])
            if fnmatch.fnmatch(candidate, body) and (not folder or i + n < len(parts)):
                return True
    return False


def test_archive_holds_only_the_pack():
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True).stdout.splitlines()
    if not tracked:  # not a git checkout (e.g. an unpacked archive): judge the folder itself
        tracked = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".git" not in p.parts]
    shipped = {p for p in tracked if not _ignored(p, patterns)}
    top = {p.split("/")[0] for p in shipped}
    assert {"__init__.py", "nodes", "cfg_runtime", "web", "example_workflows", "workflows", "LICENSE",
            "pyproject.toml", "README.md", "requirements.txt"} <= top, top
    assert not top & {"tests", "devkit", "bench", "scripts", ".ci", "docs"}, top
    assert "workflows/build.py" not in shipped and "workflows/api/plain_cfg.json" in shipped
    assert not [p for p in shipped if p.startswith("workflows/") and p.endswith(".py")], "the graph sources stay home"
    # every example workflow ships with its thumbnail, every node with its help page
    examples = {p for p in shipped if p.startswith("example_workflows/")}
    assert {p[:-5] for p in examples if p.endswith(".json")} == {p[:-4] for p in examples if p.endswith(".jpg")}
    assert {f"web/docs/{n}.md" for n in NEW_IDS | OLD_IDS} <= shipped


def test_node_mappings_are_literals_the_manager_scanner_reads():
    tree = ast.parse((REPO / "nodes" / "__init__.py").read_text())
    literal = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    literal[target.id] = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    classes = literal.get("NODE_CLASS_MAPPINGS")
    assert classes, "NODE_CLASS_MAPPINGS must be a dict literal in nodes/__init__.py"
    assert sorted(classes) == sorted(literal.get("NODE_DISPLAY_NAME_MAPPINGS") or [])
    assert NEW_IDS | OLD_IDS == set(classes)
    assert "comfy_entrypoint" not in (REPO / "__init__.py").read_text()  # one registration path, no node twice
