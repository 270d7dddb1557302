#!/usr/bin/env bash
# A sweep as a SLURM job array: one array task per point, each on one GPU. From the repository root:
#
#   N=$(.venv/bin/toytasks sweep configs/sweeps/grokking_weight_decay.yaml --list | head -n 1)
#   sbatch --array=0-$((N - 1)) scripts/sweep_sbatch.sh configs/sweeps/grokking_weight_decay.yaml
#
# Task I trains point I alone (`--index I`): a finished point is skipped and an interrupted one
# resumes from its last.ckpt, so submitting the same array again finishes whatever is left.
# `--array=0-8%4` runs at most 4 at once. Extra `key=value` arguments after the sweep file apply
# to every point; give the same ones to `--list`. The runs go to checkpoints/<sweep name>/.
# With `--vmap` (given to `--list` too), task I trains group I: the points that differ only in
# seeds, learning rate, weight decay or initial weights, as one stacked run.
#SBATCH --job-name=toytasks-sweep
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-(N-1), N from: toytasks sweep FILE --list}"
cd "${SLURM_SUBMIT_DIR:-.}"
exec .venv/bin/toytasks sweep "$1" "${@:2}" --index "$SLURM_ARRAY_TASK_ID" --no-progress
