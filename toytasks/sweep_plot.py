"""`toytasks plot SWEEP_DIR`: a sweep's headline number against the swept value, with the spread
over seeds, in SWEEP_DIR/plots/sweep.png (and the numbers in sweep.csv beside it).

A sweep directory is one holding run directories (checkpoints/<experiment>/). Each run gives one
row: `run`, its config flattened to dotted columns (`optim.weight_decay`, `seed`, ...) and its
task's headline number (HEADLINES). The swept values are the config columns that differ between
runs, seeds aside; the one with the most values is the x axis, any others split the runs into
lines.

`run_table` is `load_runs(...).configs` (toytasks/runs.py) with two columns added: whether each
run has finished, and its headline number.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pandas as pd

from .plots import PLOTS_DIR, _save, plt

GROKKED = 0.99


def grokking_step(metrics: pd.DataFrame) -> float:
    """The first step at which test accuracy reaches 0.99 (NaN if it never does)."""
    if "val/acc" not in metrics:
        return math.nan
    reached = metrics.loc[metrics["val/acc"] >= GROKKED, "step"]
    return float(reached.iloc[0]) if len(reached) else math.nan


def final(column: str) -> Callable[[pd.DataFrame], float]:
    def value(metrics: pd.DataFrame) -> float:
        values = metrics[column].dropna() if column in metrics else pd.Series(dtype=float)
        return float(values.iloc[-1]) if len(values) else math.nan
    return value


# task name -> (what the number is, how to read it from a run's metrics table)
HEADLINES: dict[str, tuple[str, Callable[[pd.DataFrame], float]]] = {
    "modular_addition": (f"grokking step (test accuracy first >= {GROKKED})", grokking_step),
    "induction": ("final best induction score", final("heads/induction_max")),
    "brackets": ("final test accuracy", final("val/acc")),
}
DEFAULT_HEADLINE = ("final test loss", final("val/loss"))


def run_table(directory) -> pd.DataFrame:
    """One row per run under `directory`: `load_runs(...).configs` (`run` and the dotted config
    columns) with `finished` and the task's `headline` number (its label in `attrs`)."""
    from .rundir import read_meta
    from .runs import load_runs

    runs = load_runs(directory)
    labels, finished, headline = set(), [], []
    for run in runs:
        label, read = HEADLINES.get(run.task.name, DEFAULT_HEADLINE)
        labels.add(label)
        finished.append(bool(read_meta(run.path).get("finished")))
        headline.append(read(run.metrics))
    table = runs.configs.assign(finished=finished, headline=headline)
    table.attrs["headline"] = " / ".join(sorted(labels))
    return table


def swept_columns(table: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between runs, apart from the seed and where they live;
    the one with the most values first (it makes the x axis)."""
    skip = {"run", "finished", "headline", "seed", "model.seed", "out_dir", "experiment"}
    counts = {c: table[c].map(repr).nunique() for c in table.columns if c not in skip}
    return sorted((c for c, n in counts.items() if n > 1), key=lambda c: -counts[c])


def plot_sweep(table: pd.DataFrame, label: str = "headline"):
    """Each run's headline (dots) and the mean over seeds with its min-max range, against the
    first swept column; one line per combination of the others. Runs that never reach the
    headline (NaN, e.g. never grokked) are an x at the top, and counted in the title."""
    swept = swept_columns(table)
    x, lines = (swept[0], swept[1:]) if swept else (None, [])
    table = table.assign(
        _x=table[x] if x else "all runs",
        _line=table[lines].astype(str).apply(lambda r: ", ".join(f"{c}={r[c]}" for c in lines), axis=1) if lines else "")
    numeric = x is not None and pd.api.types.is_numeric_dtype(table[x])
    if not numeric:
        table["_x"] = table["_x"].astype(str)
    fig, ax = plt.subplots(figsize=(8, 5))
    for line_label, group in table.groupby("_line"):
        stats = group.groupby("_x")["headline"].agg(["mean", "min", "max"]).dropna()
        errors = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]]
        drawn = ax.errorbar(stats.index, stats["mean"], yerr=errors, marker="o", capsize=4, label=line_label or None)
        ax.scatter(group["_x"], group["headline"], color=drawn[0].get_color(), alpha=0.4, s=18)
        never = group[group["headline"].isna()]  # e.g. never grokked: an x at the top of the plot
        ax.scatter(never["_x"], [1.0] * len(never), transform=ax.get_xaxis_transform(), marker="x", s=40,
                   clip_on=False, color=drawn[0].get_color())
    if numeric:
        values = sorted(table[x].unique())
        if (table[x] > 0).all() and values[-1] >= 10 * values[0]:
            ax.set_xscale("log")
        ax.set_xticks(values, [f"{v:g}" for v in values], minor=False)  # the swept values, as written
        ax.minorticks_off()
        ax.set_xlim(values[0] / 1.3 if ax.get_xscale() == "log" else None,
                    values[-1] * 1.3 if ax.get_xscale() == "log" else None)
    seeds = table.groupby(["_x", "_line"])["seed"].nunique().max()
    title = f"{len(table)} runs, up to {seeds} seed{'s' if seeds > 1 else ''} per point: mean, min-max and each run"
    missing = int(table["headline"].isna().sum())
    if missing:
        title += f"\n{missing} run(s) never reached it (x at the top)"
    ax.set(xlabel=x or "", ylabel=table.attrs.get("headline", label), title=title)
    if lines:
        ax.legend(fontsize=8)
    return fig


def plot_sweep_dir(directory: str | Path) -> list[Path]:
    """Write SWEEP_DIR/plots/sweep.png and sweep.csv; returns their paths."""
    from .errors import ToytasksError

    directory = Path(directory)
    table = run_table(directory)
    out = directory / PLOTS_DIR
    out.mkdir(exist_ok=True)
    csv = out / "sweep.csv"
    table[["run", *swept_columns(table), "seed", "finished", "headline"]].to_csv(csv, index=False)
    finished = table[table["finished"]]
    if finished.empty:
        raise ToytasksError(f"{directory}: none of its {len(table)} runs has finished yet")
    finished.attrs = table.attrs
    fig = plot_sweep(finished)
    if len(finished) < len(table):
        fig.axes[0].set_title(f"{fig.axes[0].get_title()}\n({len(table) - len(finished)} unfinished run(s) left out)")
    return [_save(fig, out / "sweep.png"), csv]
