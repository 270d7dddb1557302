#!/usr/bin/env bash
# Issue 20's GPU checks and figures in one call of the device tool, after scripts/gpu_prepare.sh:
#
#   command: bash scripts/gpu_check.sh        carry: [".gpu"]        timeout_s: 590
#
# (or name parts: `bash scripts/gpu_check.sh tests full`). Parts, in order of importance, each under
# its own time limit (together 560 s, so that the call ends inside its timeout with what it
# measured, written to $OUT, which is what comes back):
#   preflight  20 steps of a small grokking run: the carried wheels import and train on the GPU;
#              if it fails, nothing else runs (the log says why)
#   tests      tests/test_cuda.py: GPU run replayed on the CPU; the captured step against itself
#              unrecorded (expected bit for bit) and against the eager step, printing the largest
#              relative loss differences (set CAPTURED_VS_EAGER in tests/test_cuda.py from them)
#   full       the whole configs/grokking.yaml run with its measures, each in a fresh process:
#              strict fp32 and TF32 (wall time of training, phases: does TF32 move them? captured?),
#              and fp32 without the measures (their share of the time); the two runs with measures
#              come back as fp32.tar.gz and tf32.tar.gz (metrics, phases, plots)
#   seed       toytasks against the seed notebook's loop, 2,000 steps, 2 repetitions
#   grid       a 32-run grid (learning rate x weight decay x seed) as one stacked run against the
#              32 runs in sequence, 200 steps each
#   paths      2,000 steps of the full run, captured and eager: which step is faster
# and two parts run only when named:
#   sweep      issue 16's configs/sweeps/grokking_interventions.yaml (42 runs) with --vmap, its six
#              groups at once; the runs' small files come back as sweep.tar.gz (for `toytasks plot`)
#   precision  the full run in TF32, and in fp32 without its measures, side by side (two processes,
#              each on its own CPU core; the GPU is mostly idle): what TF32 does to time and phases,
#              and the measures' share of the fp32 run's time (against the `full` part's fp32 run)
# Seen on an H200 (2026-11): preflight 20 s; tests 34 s; each full run about 96 s as a process, so
# `full` fits one setting in its limit; one seed repetition about 60 s; grid 92 s; sweep 60 s; two
# GPU processes side by side slow each other down badly (time them alone). Raise a limit only
# with the device time to pay for it: a session has 15 minutes, the machine's start included.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}  # (PYTHON=.venv/bin/python tries the script on a machine without a GPU)
if ! "$PYTHON" -c "import transformer_lens, datasets" 2>/dev/null; then  # the GPU image lacks them
    wheels=(.gpu/whl/*.whl)  # datasets needs pyarrow >= 24: the carried one where the image's is older
    "$PYTHON" -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null \
        || wheels+=(.gpu/pyarrow/*.whl)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}" || { echo "install of .gpu wheels failed: run scripts/gpu_prepare.sh and carry .gpu"; exit 1; }
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
    return $code
}

parts=${*:-preflight tests full seed grid paths}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$LOG"
"$PYTHON" -c "import torch, lightning, transformer_lens, datasets, pyarrow; print('torch', torch.__version__, \
'lightning', lightning.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)" 2>&1 | tee -a "$LOG"
for p in $parts; do
    case $p in
        preflight) rm -rf /tmp/preflight; part preflight 40 "$PYTHON" -m toytasks.cli train configs/grokking.yaml max_steps=20 \
                       task.p=17 checkpoints.every=10 out_dir=/tmp/preflight --no-progress \
                       || { echo "preflight failed: nothing else runs"; exit 1; } ;;
        tests) part tests 90 "$PYTHON" -m pytest tests/test_cuda.py -q -s -p no:cacheprovider ;;
        full) part full 180 "$PYTHON" scripts/bench.py --full --keep "$OUT" --out "$OUT/full.json" \
                  --settings fp32= tf32=matmul_precision=high no_measures=measures.fourier=null ;;
        paths) part paths 40 "$PYTHON" scripts/bench.py --full --full-steps 2000 --settings captured= \
                   eager=trainer.capture=off --out "$OUT/paths.json" ;;
        seed) part seed 90 "$PYTHON" scripts/bench.py --steps 2000 --reps 2 --peer .gpu/seed_grokking_loop.py \
                  --out "$OUT/seed.json" ;;
        grid) part grid 120 "$PYTHON" scripts/bench_ensemble.py --grid --seeds 32 --steps 200 --reps 1 \
                  --out "$OUT/grid.json" ;;
        sweep) part sweep 100 "$PYTHON" -m toytasks.cli sweep configs/sweeps/grokking_interventions.yaml --vmap -j 6 \
                   out_dir=/tmp/sweep
               (cd /tmp/sweep && find . -name series -prune -o -type f ! -name '*.ckpt' ! -path '*/tb/*' -print \
                   | tar czf "$OUT/sweep.tar.gz" -T -) ;;
        precision) part precision 120 bash -c "\"$PYTHON\" scripts/bench.py --full --settings tf32=matmul_precision=high \
                       --out $OUT/full_tf32.json & \"$PYTHON\" scripts/bench.py --full \
                       --settings fp32_no_measures=measures.fourier=null --out $OUT/full_no_measures.json & wait" ;;
        *) echo "unknown part $p (preflight tests full seed grid paths sweep precision)"; exit 2 ;;
    esac
done
echo "=== results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
"$PYTHON" scripts/gpu_summary.py "$OUT"
