"""Where things are: the checkout, and the real ComfyUI the demo, tests and benches run against.

``COMFYUI_DIR`` (environment) overrides the default ``<repo>/.cache/comfyui`` that
``scripts/setup_env.sh`` creates.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or (REPO / ".cache" / "comfyui")).resolve()
TEST_NODES_DIR = REPO / "devkit" / "comfy_test_nodes"  # test-only ComfyUI nodes (random embeddings, faults)

def comfyui_version(comfyui_dir: Path | None = None) -> str:
    """The ``__version__`` in that ComfyUI's comfyui_version.py ("" when unknown)."""
    import re

    try:
        text = (Path(comfyui_dir or COMFYUI_DIR) / "comfyui_version.py").read_text()
    except OSError:
        return ""
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return found.group(1) if found else ""


def has_ltx2_av(comfyui_dir: Path | None = None) -> bool:
    """True when that ComfyUI (default: COMFYUI_DIR) has LTX-2 audio+video (0.29 and later)."""
    return (Path(comfyui_dir or COMFYUI_DIR) / "comfy" / "ldm" / "lightricks" / "av_model.py").is_file()


class ComfyUIMissing(RuntimeError):
    """ComfyUI is not where the tests look for it (tests turn this into a skip)."""


def comfyui_available() -> bool:
    return (COMFYUI_DIR / "main.py").is_file() and (COMFYUI_DIR / "comfy").is_dir()


def require_comfyui() -> Path:
    """Return COMFYUI_DIR, or raise ComfyUIMissing with a message saying how to get it."""
    if not comfyui_available():
        raise ComfyUIMissing(
            f"ComfyUI not found at {COMFYUI_DIR} (no main.py / comfy/). "
            "Run `bash scripts/setup_env.sh` or set COMFYUI_DIR to a ComfyUI checkout."
        )
    return COMFYUI_DIR


def add_repo_to_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def import_comfy(cpu: bool = True):
    """Make ``import comfy.*`` work in this process and return the ``comfy`` package.

    Puts COMFYUI_DIR on sys.path and sets ``comfy.cli_args.args.cpu`` before
    ``comfy.model_management`` is imported (it picks the device at import time).
    Tests turn ComfyUIMissing into a skip (tests/support/paths.py).
    """
    path = str(require_comfyui())
    # ComfyUI's top-level modules (nodes.py, tests/, utils/, app/, server.py) must win
    # over same-named ones elsewhere: this repo has a `nodes/` package, and
    # comfy_execution does `import nodes` meaning ComfyUI's nodes.py.
    if sys.path[:1] != [path]:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    stray = sys.modules.get("nodes")
    if stray is not None and not str(getattr(stray, "__file__", "") or "").startswith(path):
        raise RuntimeError(
            f"a module named 'nodes' ({getattr(stray, '__file__', stray)}) was imported before "
            "ComfyUI; ComfyUI needs its own nodes.py under that name. Import the pack's nodes "
            "through the pack, not as top-level `nodes`."
        )
    import comfy.cli_args  # parses no argv when imported as a library (args_parsing False)

    if cpu:
        if "comfy.model_management" in sys.modules and not comfy.cli_args.args.cpu:
            # Too late to change the device choice; say so instead of misbehaving.
            import comfy.model_management as mm

            if mm.cpu_state != mm.CPUState.CPU:
                raise RuntimeError("comfy.model_management was imported before import_comfy(cpu=True)")
        comfy.cli_args.args.cpu = True
    import comfy

    return comfy


# --- temp folders of test runs, named by the pid that made them ---------------------------------
TEST_TEMP_PREFIXES = ("cfgp_comfy_", "cfgp_tiny_models_", "cfgp_browser_home_", "cfgp_no_frontend_")


def owned_tempdir(prefix: str) -> str:
    """A new temp folder '<prefix><pid>-*' of this process: sweep_test_temp removes it once this process is done
    (also after a failed or interrupted run) or, should it be killed, in the next run."""
    import tempfile

    assert prefix in TEST_TEMP_PREFIXES, prefix
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def sweep_test_temp(own_pid: int | None = None) -> list[str]:
    """Remove test temp folders of `own_pid` and of processes that have ended (never a live process's);
    returns what was removed."""
    import shutil
    import tempfile

    root, removed = tempfile.gettempdir(), []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        prefix = next((p for p in TEST_TEMP_PREFIXES if name.startswith(p)), None)
        owner = name[len(prefix):].split("-", 1)[0] if prefix else ""
        if not (owner.isascii() and owner.isdigit()):
            continue
        if int(owner) != own_pid:
            try:
                os.kill(int(owner), 0)
                continue  # alive: another run's
            except ProcessLookupError:
                pass
            except OSError:
                continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed
