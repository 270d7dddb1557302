"""Calibrate the LLC sampler on a run: estimates over a grid of step sizes, temperatures and
localizations at a few checkpoints, with the diagnostics that say whether the chains settled.

    .venv/bin/python scripts/llc_calibration.py RUN_DIR --steps 32 400 2000 --lr 1e-5 1e-4 1e-3 \\
        --n-beta 10 30 100 --localization 100 --chains 2 --draws 200

prints one line per (checkpoint, setting) and writes RUN_DIR/llc/calibration.csv and
calibration.png (each setting's chains at each checkpoint). The columns:

    llc, std        the estimate (mean over chains, as `toytasks measure --with llc`) and its spread
    late/all        the estimate from the chains' second halves over the whole-chain estimate:
                    near 1 when the chains settled early (devinterp counts every step, so a slow
                    start pulls the estimate down)
    below           the fraction of SGLD steps whose batch loss is below L(w*): large when the
                    sampler is still training the model (the checkpoint is not a minimum)
    seconds         the wall time of the estimate

The README ("Developmental analysis") says which settings this chose for the defaults, and why.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from toytasks import load_run
from toytasks.measures.llc import LLCOptions, estimate_llc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="checkpoint steps")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4])
    parser.add_argument("--n-beta", type=float, nargs="+", default=[30.0])
    parser.add_argument("--localization", type=float, nargs="+", default=[100.0])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64])
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: timings comparable under load)")
    parser.add_argument("--out", default=None, help="file name stem in RUN_DIR/llc/ (default: calibration)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = load_run(args.run_dir)
    measure = run.measure("llc")  # the run's training data and loss, as `--with llc` uses them
    rows, traces = [], {}
    for step in args.steps:
        model = run.model_at(step).original_model
        for lr, n_beta, gamma, batch in itertools.product(args.lr, args.n_beta, args.localization, args.batch_size):
            options = dataclasses.replace(measure.options, lr=lr, n_beta=n_beta, localization=gamma, batch_size=batch,
                                          num_chains=args.chains, num_draws=args.draws)
            started = time.perf_counter()
            result = estimate_llc(model, measure.loss, measure.data, options)
            seconds = time.perf_counter() - started
            trace = result["trace"]  # [chain, sgld step]
            late = n_beta * (trace[:, trace.shape[1] // 2:].mean() - result["init_loss"])
            row = dict(step=step, lr=lr, n_beta=n_beta, localization=gamma, batch_size=batch, llc=result["mean"],
                       std=result["std"], late_over_all=late / result["mean"] if result["mean"] else np.nan,
                       below=float((trace < result["init_loss"]).mean()), init_loss=result["init_loss"],
                       finite=bool(np.isfinite(trace).all()), seconds=seconds)
            rows.append(row)
            traces[(step, lr, n_beta, gamma, batch)] = (trace, result["init_loss"])
            print(f"step {step:5d}  lr {lr:7.1e}  n_beta {n_beta:6.1f}  gamma {gamma:6.1f}  batch {batch:4d}  "
                  f"llc {row['llc']:9.2f} ± {row['std']:7.2f}  late/all {row['late_over_all']:5.2f}  "
                  f"below {row['below']:4.2f}  {seconds:5.1f} s", flush=True)
    out = run.paths.measure_dir("llc")
    out.mkdir(exist_ok=True)
    stem = args.out or "calibration"
    pd.DataFrame(rows).to_csv(out / f"{stem}.csv", index=False)
    draw(traces, args.steps, out / f"{stem}.png")
    print(f"wrote {out / f'{stem}.csv'} and {stem}.png")


def draw(traces: dict, steps: list[int], path: Path) -> None:
    """One panel per (checkpoint, setting): each chain's batch loss minus L(w*), symlog."""
    import matplotlib

    matplotlib.use("Agg")
    from toytasks.plots import plt, save_figure

    settings = sorted({key[1:] for key in traces})
    fig, axes = plt.subplots(len(settings), len(steps), figsize=(3.6 * len(steps), 2.2 * len(settings)),
                             squeeze=False, sharex=True)
    for (i, setting), (j, step) in itertools.product(enumerate(settings), enumerate(steps)):
        trace, init = traces[(step, *setting)]
        ax = axes[i][j]
        for chain in trace:
            ax.plot(chain - init, linewidth=0.7)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_yscale("symlog", linthresh=1e-4)
        lr, n_beta, gamma, batch = setting
        ax.set_title(f"step {step}: lr {lr:g}, nβ {n_beta:g}, γ {gamma:g}, b {batch}", fontsize=7)
        ax.tick_params(labelsize=6)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
