"""The runtime's layout, checked from its source: layers import only downwards, ComfyUI only
in the adapters, no module over 400 lines and no function over 60 (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parent.parent / "cfg_runtime"
LAYERS = ("errors", "guidance", "parallel", "group", "adapters")  # bottom to top
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for p in RUNTIME.rglob("*.py") if "__pycache__" not in p.parts)


def _layer(path: Path) -> str:
    rel = path.relative_to(RUNTIME)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = ["cfg_runtime", *path.relative_to(RUNTIME).parent.parts]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def test_every_runtime_module_belongs_to_a_layer():
    stray = [str(p.relative_to(RUNTIME)) for p in _modules() if _layer(p) not in LAYERS + ("__init__",)]
    assert not stray, f"modules outside the layers {LAYERS}: {stray}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(RUNTIME)))
def test_imports_run_down_the_layers(path):
    layer = _layer(path)
    if layer == "__init__":
        return
    rank = LAYERS.index(layer)
    for line, name in _imports(path):
        if name.split(".")[0] == "comfy" or name.startswith(("comfy_", "latent_preview", "nodes", "folder_paths")):
            assert layer == "adapters", f"{path.name}:{line} imports ComfyUI ({name}) outside the adapters layer"
        if name.startswith("cfg_runtime."):
            target = name.split(".")[1]
            if target in LAYERS:
                assert LAYERS.index(target) <= rank, (
                    f"{path.relative_to(RUNTIME)}:{line} imports {name}, a layer above {layer}")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(RUNTIME)))
def test_modules_and_functions_stay_small(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(RUNTIME)} has {lines} lines (at most {MAX_MODULE_LINES})"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, (
                f"{path.relative_to(RUNTIME)}:{node.lineno} {node.name}() has {length} lines "
                f"(at most {MAX_FUNCTION_LINES})")


# Inside adapters/: sub-layers, bottom to top (docs/ARCHITECTURE.md "The model-family layer").
ADAPTER_PARTS = ("split", "families", "models", "sampling")
ADAPTERS = RUNTIME / "adapters"


def _adapter_part(path: Path) -> str | None:
    rel = path.relative_to(ADAPTERS)
    return rel.parts[0] if len(rel.parts) > 1 else None


@pytest.mark.parametrize("path", sorted(ADAPTERS.rglob("*.py")), ids=lambda p: str(p.relative_to(RUNTIME)))
def test_adapters_parts_import_downwards_and_families_through_one_lookup(path):
    """split < families < models < sampling; outside families/ a family is reached only through
    the package (``cfg_runtime.adapters.families``: family_of), never one family's module."""
    part = _adapter_part(path)
    if part is None:
        return
    assert part in ADAPTER_PARTS, f"adapters/{part}/ is not one of {ADAPTER_PARTS}"
    for line, name in _imports(path):
        if not name.startswith("cfg_runtime.adapters."):
            continue
        target = name.split(".")[2]
        assert ADAPTER_PARTS.index(target) <= ADAPTER_PARTS.index(part), (
            f"{path.relative_to(RUNTIME)}:{line} imports {name}, a part above adapters/{part}/")
        if part != "families" and target == "families":
            assert name == "cfg_runtime.adapters.families", (
                f"{path.relative_to(RUNTIME)}:{line} imports {name}: reach a family through the lookup "
                f"(cfg_runtime.adapters.families.family_of)")


def _compares_model_class(tree: ast.AST) -> list[int]:
    """Lines comparing a class's __name__ / __module__ with a model-like name (…Model, comfy.ldm…)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        names = any(isinstance(p, ast.Attribute) and p.attr in ("__name__", "__module__") for p in parts)
        texts = [c.value for p in parts for c in ast.walk(p) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        if names and any(t.endswith("Model") or t.startswith("comfy.ldm") for t in texts):
            found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", [p for p in _modules() if "families" not in p.parts],
                         ids=lambda p: str(p.relative_to(RUNTIME)))
def test_only_the_family_layer_knows_model_classes(path):
    """comfy.ldm imports and model class-name checks live in adapters/families/ only
    (comfy.ldm.modules is ComfyUI's shared attention code, no model family: the launch options
    read which attention function the process runs)."""
    for line, name in _imports(path):
        family_code = name.startswith("comfy.ldm") and not name.startswith("comfy.ldm.modules")
        assert not family_code, f"{path.relative_to(RUNTIME)}:{line} imports {name}"
    lines = _compares_model_class(ast.parse(path.read_text()))
    assert not lines, f"{path.relative_to(RUNTIME)} compares model class names at lines {lines}"


def test_the_demo_script_does_not_import_the_tests():
    script = RUNTIME.parent / "scripts" / "run_demo.py"
    names = [name for _, name in _imports_of(script)]
    assert not [n for n in names if n.startswith(("support", "tests"))], names


def _imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.append((node.lineno, node.module or ""))
    return out


# The tests: a test module (tests/test_*.py) imports no other test module; shared helpers live in tests/support/.
TESTS = RUNTIME.parent / "tests"


def _test_module_imports(folder: Path) -> list[str]:
    """'file:line imports name' for each import, in any .py file under `folder`, of one of the
    folder's test modules (test_*.py): plain, as ``tests.test_x``, or relative."""
    test_modules = {p.stem for p in folder.glob("test_*.py")}
    found = []
    for path in sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module] if node.module else [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "tests":
                    parts = parts[1:]
                if parts and parts[0] in test_modules:
                    found.append(f"{path.relative_to(folder)}:{node.lineno} imports {name}")
    return found


def test_no_test_module_imports_another():
    found = _test_module_imports(TESTS)
    assert not found, f"test modules imported as libraries (move the helpers into tests/support/): {found}"


def test_the_test_import_check_finds_each_form(tmp_path):
    (tmp_path / "test_a.py").write_text("X = 1\n")
    (tmp_path / "test_b.py").write_text("import os\nfrom test_a import X\n")
    (tmp_path / "test_c.py").write_text("from . import test_a\nimport tests.test_b\n")
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "helper.py").write_text("from support.paths import REPO\nfrom tests.test_a import X\n")
    assert _test_module_imports(tmp_path) == ["support/helper.py:2 imports tests.test_a", "test_b.py:2 imports test_a",
                                              "test_c.py:1 imports test_a", "test_c.py:2 imports tests.test_b"]
