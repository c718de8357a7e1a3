#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole check: lint, then the test suite.
# Needs: python3 (3.10+) and redis-server on PATH (tests start their own on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
