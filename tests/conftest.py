"""Shared fixtures.

Test modules import helpers as ``from support.<module> import ...`` (tests/ is on
sys.path). Avoid ``import tests.…``: ComfyUI has a regular ``tests`` package of its own.
Avoid a top-level ``import nodes``: that name belongs to ComfyUI's nodes.py in-process.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_REPO = _TESTS.parent
for _p in (str(_TESTS), str(_REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import atexit  # noqa: E402
import os  # noqa: E402

from support.paths import (COMFYUI_DIR, NEEDS_029, NEEDS_033, NEEDS_BROWSER, ComfyUIMissing,  # noqa: E402
                           comfyui_available, comfyui_version, has_ltx2_av, has_minimax_h3, import_comfy)

# The whole suite runs once per ComfyUI (scripts/test.sh: 0.3.75, then 0.29). On a ComfyUI
# with LTX-2 the 0.29-only tests (test_ltx_branches.py reads COMFYUI_029_DIR) use it too.
if has_ltx2_av() and not os.environ.get("COMFYUI_029_DIR"):
    os.environ["COMFYUI_029_DIR"] = str(COMFYUI_DIR)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# pytest (>= 8) sets up the repo root as a Package because it has an __init__.py (the
# ComfyUI entry point), which imports it, and that imports `comfy`. Make `comfy`
# importable (CPU) before collection so that works in the test process.
if comfyui_available():
    import_comfy()

TINY_LTXV_NAME = "tiny_ltxv.safetensors"
TINY_LORA_NAME = "tiny_lora.safetensors"
TINY_LTXAV_NAME = "tiny_ltxav.safetensors"
TINY_AUDIO_VAE_NAME = "tiny_ltx_audio_vae.safetensors"


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The session's tiny models. Not under pytest's basetemp: a concurrent pytest run (of
    another checkout) prunes old basetemp folders, which would pull the files from under the
    server's models/ symlinks."""
    import shutil

    from devkit.paths import owned_tempdir

    path = Path(owned_tempdir("cfgp_tiny_models_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_ltxv_path(tiny_model_dir) -> Path:
    """A 2-layer LTXV file (safetensors) built with ComfyUI's own class (seed 0)."""
    if not comfyui_available():
        pytest.skip(f"ComfyUI not found at {COMFYUI_DIR}; run scripts/setup_env.sh or set COMFYUI_DIR")
    from devkit.tiny_models import build_tiny_ltxv

    return build_tiny_ltxv(tiny_model_dir / TINY_LTXV_NAME, seed=0)


@pytest.fixture(scope="session")
def tiny_lora_path(tiny_model_dir, tiny_ltxv_path) -> Path:
    """A rank-4 LoRA for the tiny LTXV (generic `diffusion_model.<module>.lora_up/down` keys)."""
    from devkit.tiny_models import build_tiny_lora

    return build_tiny_lora(tiny_model_dir / TINY_LORA_NAME, tiny_ltxv_path, seed=1, rank=4)


_early_server = None


def pytest_report_header(config):
    version = comfyui_version() or "not found"
    return [f"ComfyUI {version} at {COMFYUI_DIR} (LTX-2 audio+video: {'yes' if has_ltx2_av() else 'no'})"
            + ("; CI=true: skips for want of ComfyUI 0.29 or a browser fail" if IN_CI else "")]


def _refused_skip(reason: str) -> str | None:
    """Why CI must not accept this skip, or None when it may."""
    if NEEDS_BROWSER in reason:
        return "CI runs every browser test: install Debian's chromium and playwright (scripts/setup_env.sh)"
    if has_ltx2_av() and ("ComfyUI 0.29" in reason or NEEDS_029 in reason):
        return f"this run is on ComfyUI {comfyui_version()} (it has LTX-2), so nothing may skip for want of 0.29"
    if has_minimax_h3() and NEEDS_033 in reason:
        return f"this run is on ComfyUI {comfyui_version()} (it has MiniMax-H3), so nothing may skip for want of 0.33"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true, turn skips for want of ComfyUI 0.29 (on a 0.29 run) or of the browser into failures."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)  # fixtures read it at teardown (tests/test_browser.py)
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    why = _refused_skip(reason)
    if why:
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {reason}\n{why}"


def pytest_collection_modifyitems(session, config, items):
    """Spawn the ComfyUI server as soon as we know a selected test needs it, so its ~10 s
    start-up overlaps the in-process imports that follow (e.g. the repo-root package)."""
    global _early_server
    if _early_server is None and comfyui_available() and any("comfy_server" in getattr(i, "fixturenames", ()) for i in items):
        from devkit.comfy_server import ComfyServer

        _early_server = ComfyServer()
        _early_server.start(wait=False)


def sweep_leftovers() -> None:
    """What this run made in the temp folder and /dev/shm, and what killed runs left: the test folders
    (devkit.paths) and the pack's rendezvous / multiprocessing folders and semaphores of processes that have
    ended. Never another live run's (other test runs may share this machine)."""
    from devkit.paths import sweep_test_temp

    import tempfile
    import time

    sweep_test_temp(os.getpid())
    try:
        from cfg_runtime.group.host import MP_PREFIX, STORE_PREFIX, sweep_stale_stores
    except ImportError:
        return
    deadline = time.monotonic() + 3.0  # ranks of a server just stopped end within about a second
    while True:
        sweep_stale_stores()
        pids = {n.split("-")[2] for n in os.listdir(tempfile.gettempdir()) if n.startswith((MP_PREFIX, STORE_PREFIX))}
        if time.monotonic() > deadline or not any(os.path.exists(f"/proc/{p}") for p in pids if p.isdigit()):
            return
        time.sleep(0.2)


def pytest_sessionstart(session):
    from devkit.paths import sweep_test_temp

    sweep_test_temp()  # what killed runs left
    atexit.register(sweep_leftovers)  # also when the run ends abnormally (an internal error, Ctrl-C)


def pytest_sessionfinish(session, exitstatus):
    global _early_server
    if _early_server is not None:
        _early_server.stop()
        _early_server = None
    # the session fixtures (servers, the in-process group) are finished by now, passed or failed
    sweep_leftovers()


@pytest.fixture(scope="session")
def comfy_server(tiny_ltxv_path, tiny_lora_path):
    """One real ComfyUI server for the session (a devkit.comfy_server.ComfyServer), with the
    tiny model and LoRA installed as models/diffusion_models/tiny_ltxv.safetensors and
    models/loras/tiny_lora.safetensors, and custom_nodes/ linking this checkout (as
    comfyui-cfg-parallel) and devkit/comfy_test_nodes (as cfgp_test_nodes)."""
    global _early_server
    from devkit.comfy_server import ComfyServer

    server, _early_server = _early_server, None
    try:
        if server is None:
            server = ComfyServer()
            server.start(wait=False)
        server.add_model("diffusion_models", TINY_LTXV_NAME, tiny_ltxv_path)
        server.add_model("loras", TINY_LORA_NAME, tiny_lora_path)
        if has_ltx2_av():  # workflows/*/tiny_ltx2_demo.json: the tiny LTX-2 model and audio VAE
            from support import tiny_ltx2

            folder = tiny_lora_path.parent
            server.add_model("diffusion_models", TINY_LTXAV_NAME,
                             tiny_ltx2.build_tiny_ltxav(folder / TINY_LTXAV_NAME, seed=0))
            server.add_model("checkpoints", TINY_AUDIO_VAE_NAME,
                             tiny_ltx2.build_tiny_ltx_audio_vae(folder / TINY_AUDIO_VAE_NAME))
        server.wait_ready()
    except ComfyUIMissing as e:
        pytest.skip(str(e))
    except BaseException:
        if server is not None:
            server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def own_worker_group():
    """Each test file starts its own in-process worker group: none is inherited from the file
    before it (a group matching the next file's spec would otherwise be reused)."""
    yield
    group_module = sys.modules.get("cfg_runtime.group")
    if group_module is not None:
        group_module.shutdown_group()
