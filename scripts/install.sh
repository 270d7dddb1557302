#!/usr/bin/env bash
# Create .venv and install toytasks with its test tools.
# torch comes first and pinned: an unpinned `torch` requirement with no torch installed pulls a
# CUDA build of several GB. Set TORCH_SPEC to choose another build (e.g. TORCH_SPEC=torch on a GPU box).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python -c "import toytasks, torch; print(f'toytasks {toytasks.__version__} installed (torch {torch.__version__})')"
