#!/usr/bin/env bash
# Prepares the GPU measurements of scripts/gpu_check.sh. Run it on the development machine, in the
# checkout of the session that is lent a GPU (the device tool sends that checkout), once:
#
#   bash scripts/gpu_prepare.sh
#
# It fills .gpu/ (kept out of git through .git/info/exclude) with what the GPU machine lacks: the
# Python 3.12 wheels of transformer-lens and datasets and of their two requirements missing there
# (dill, multiprocess; about 2.5 MB; the machine has torch, Lightning, transformers, pandas,
# ...), pyarrow's wheel (about 40 MB; installed there only if the image's pyarrow is older than the
# 24 that datasets needs), and a copy of the seed notebook's loop (../shared/peer/, which does not
# travel).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
mkdir -p .gpu/whl
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
mkdir -p .gpu/pyarrow
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/pyarrow pyarrow==26.0.1
cp ../shared/peer/seed_grokking_loop.py .gpu/
du -sh .gpu && ls .gpu .gpu/whl
