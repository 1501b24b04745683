#!/usr/bin/env bash
# Install what the tests need (idempotent), then run the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k worker_group`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup_env.sh"
cd "$here"
exec "$here/.venv/bin/python" -m pytest -q "$@"
