"""The test suite's view of where things are (devkit.paths) and the skip markers CI refuses."""
from __future__ import annotations

from devkit.paths import (COMFYUI_DIR, REPO, TEST_NODES_DIR, ComfyUIMissing, add_repo_to_path,  # noqa: F401
                          comfyui_available, comfyui_version, has_ltx2_av, import_comfy, require_comfyui)

# Skip reasons that CI refuses (tests/conftest.py): a test that skips for want of ComfyUI
# 0.29 fails when the suite runs on a ComfyUI with LTX-2, one that skips for want of 0.33
# fails on a ComfyUI with MiniMax-H3, and a browser test that skips fails whenever CI=true.
# Start such reasons with these markers.
NEEDS_029 = "[needs ComfyUI 0.29]"
NEEDS_033 = "[needs ComfyUI 0.33]"
NEEDS_BROWSER = "[needs a browser]"


def has_minimax_h3() -> bool:
    """True when this ComfyUI has MiniMax-H3 (0.33 and later); reads no module."""
    return (COMFYUI_DIR / "comfy" / "ldm" / "minimax" / "model.py").is_file()


def import_comfy_or_skip(cpu: bool = True):
    import pytest

    try:
        return import_comfy(cpu=cpu)
    except ComfyUIMissing as e:
        pytest.skip(str(e))
