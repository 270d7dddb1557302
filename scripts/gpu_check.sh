#!/usr/bin/env bash
# Issue 20's GPU checks and figures in one call of the device tool, after scripts/gpu_prepare.sh:
#
#   command: bash scripts/gpu_check.sh        carry: [".gpu"]        timeout_s: 590
#
# (or name parts: `bash scripts/gpu_check.sh tests full`). Parts, each under its own time limit
# (together 545 s, so that the call ends inside its timeout with what it measured, written to
# $OUT, which is what comes back; a rerun of the parts that ran out fits only on a warm machine):
#   preflight  20 steps of a small grokking run: the carried wheels import and train on the GPU
#   tests      tests/test_cuda.py: GPU run replayed on the CPU; the captured step against itself
#              unrecorded (expected bit for bit) and against the eager step, printing the largest
#              relative loss differences (set CAPTURED_VS_EAGER in tests/test_cuda.py from them)
#   full       the whole configs/grokking.yaml run with its measures, strict fp32 then TF32, each in
#              a fresh process: wall time of training, phases (does TF32 move them?), captured?
#   paths      2,000 steps of it, captured and eager: which step is faster
#   seed       toytasks against the seed notebook's loop, 2,000 steps, 2 repetitions
#   grid       a 32-run grid (learning rate x weight decay x seed) as one stacked run against the
#              32 runs in sequence, 200 steps each
# Nothing here has run on a GPU yet: the limits are guesses; a part that runs out is reported.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}  # (PYTHON=.venv/bin/python tries the script on a machine without a GPU)
if ! "$PYTHON" -c "import transformer_lens, datasets" 2>/dev/null; then  # the GPU image lacks them
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || { echo "install of .gpu/whl failed: run scripts/gpu_prepare.sh and carry .gpu"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD

part() {  # NAME LIMIT COMMAND...: run it under its limit, keep its output in the log, show its end
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name (limit $limit s): $*"
    timeout "$limit" "$@" >"/tmp/part_$name.log" 2>&1
    local code=$?
    { echo "=== $name: $*"; cat "/tmp/part_$name.log"; } >>"$LOG"
    tail -n 20 "/tmp/part_$name.log"
    echo "=== $name: exit $code after $((SECONDS - start)) s$([ $code = 124 ] && echo ' (ran out of time)')"
}

parts=${*:-preflight tests full paths seed grid}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"
"$PYTHON" -c "import torch, lightning, transformer_lens, datasets, pyarrow; print('torch', torch.__version__, \
'lightning', lightning.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)" 2>&1 | tee -a "$LOG"
for p in $parts; do
    case $p in
        preflight) rm -rf /tmp/preflight; part preflight 40 "$PYTHON" -m toytasks.cli train configs/grokking.yaml max_steps=20 task.p=17 \
                       checkpoints.every=10 out_dir=/tmp/preflight --no-progress ;;
        tests) part tests 100 "$PYTHON" -m pytest tests/test_cuda.py -q -s -p no:cacheprovider ;;
        full) part full 150 "$PYTHON" scripts/bench.py --full --out "$OUT/full.json" ;;
        paths) part paths 60 "$PYTHON" scripts/bench.py --full --full-steps 2000 --settings captured= \
                   eager=trainer.capture=off --out "$OUT/paths.json" ;;
        seed) part seed 100 "$PYTHON" scripts/bench.py --steps 2000 --reps 2 --peer .gpu/seed_grokking_loop.py \
                  --out "$OUT/seed.json" ;;
        grid) part grid 95 "$PYTHON" scripts/bench_ensemble.py --grid --seeds 32 --steps 200 --reps 1 \
                  --out "$OUT/grid.json" ;;
        *) echo "unknown part $p (preflight tests full paths seed grid)"; exit 2 ;;
    esac
done
echo "=== results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
"$PYTHON" scripts/gpu_summary.py "$OUT"
