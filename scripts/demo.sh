#!/usr/bin/env bash
# Install everything (idempotent), then run the demo workflow through a real ComfyUI:
# serial (parallel_size 1) vs parallel (2 worker ranks), checked bit for bit.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup_env.sh"
exec "$here/.venv/bin/python" "$here/scripts/run_demo.py"
