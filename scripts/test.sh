#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, then run the whole test suite. This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SPECDECODE_STRICT_PLUGINS=1
shopt -s nullglob
.venv/bin/ruff check core plugins tests benchmarks examples/*/
.venv/bin/python -m pytest -q "$@"
