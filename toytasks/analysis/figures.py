"""The figures `toytasks plot` writes.

For a run (`toytasks plot RUN_DIR`): the loss and accuracy curves, then each applicable measure's
own figures (toytasks/measures/), into RUN_DIR/plots/.

For a directory of runs, e.g. a sweep's (`toytasks plot SWEEP_DIR`): each run's headline number
(its task's `headline`: the grokking step, the final induction score, ...) against the swept
value, with the spread over seeds, in SWEEP_DIR/plots/sweep.png, and the numbers in sweep.csv
beside it. The swept values are the config columns that differ between runs, seeds aside; the
one with the most values is the x axis, any others split the runs into lines.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import ToytasksError
from ..layout import RunPaths
from ..measures import MEASURES, applicable
from ..phases import milestones
from ..plots import phase_lines, plt, save_figure


def plot_run(run) -> list[Path]:
    """Every figure of a run, written into its plots/ directory; returns their paths."""
    out = run.paths.plots
    out.mkdir(exist_ok=True)
    metrics = run.metrics
    if metrics.empty:
        raise ToytasksError(f"{run.path}: nothing to plot yet (no metrics logged)")
    figures = {"loss.png": loss_curves(metrics, milestones(metrics))}
    for name in applicable(run.config):
        figures.update(MEASURES[name].figures(run))
    return [save_figure(figure, out / file) for file, figure in figures.items()]


def loss_curves(metrics, marks: dict):
    """Train and test loss (log scale) and accuracy against the step, with named steps marked."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ("train", "val"):
        if f"{name}/loss" not in metrics.columns:
            continue
        rows = metrics.dropna(subset=[f"{name}/loss"])
        label = "test" if name == "val" else name
        loss_ax.plot(rows["step"], rows[f"{name}/loss"], label=label)
        acc_ax.plot(rows["step"], rows[f"{name}/acc"], label=label)
    for column in sorted(c for c in metrics.columns if c.startswith("val/loss/")):  # e.g. induction's groups
        rows = metrics.dropna(subset=[column])
        loss_ax.plot(rows["step"], rows[column], ":", label=f"test, {column.rsplit('/', 1)[1]}")
    loss_ax.set(yscale="log", xlabel="step", ylabel="loss", title="Loss")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(-0.02, 1.02))
    for ax in (loss_ax, acc_ax):
        phase_lines(ax, marks)
    loss_ax.legend(loc="lower left")
    acc_ax.legend(loc="lower right")
    return fig


# --- a set of runs ---------------------------------------------------------------------------------

def run_table(directory) -> pd.DataFrame:
    """One row per run under `directory`: `load_runs(...).summary` (`run`, the dotted config
    columns, `finished`, its summaries) with the task's `headline` number (its label in `attrs`)."""
    from .run_set import load_runs

    runs = load_runs(directory)
    summary = runs.summary
    labels, headline = set(), []
    for run, (_, row) in zip(runs, summary.iterrows()):
        label, column = run.task.headline
        labels.add(label)
        headline.append(row.get(column))
    table = summary.assign(headline=pd.to_numeric(pd.Series(headline, index=summary.index), errors="coerce"))
    table.attrs["headline"] = " / ".join(sorted(labels))
    table.attrs["config_columns"] = list(runs.configs.columns)
    return table


def swept_columns(table: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between runs, apart from the seed and where they live;
    the one with the most values first (it makes the x axis)."""
    skip = {"run", "seed", "model.seed", "out_dir", "experiment"}
    columns = [c for c in table.attrs.get("config_columns", table.columns) if c not in skip]
    counts = {c: table[c].map(repr).nunique() for c in columns}
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
    directory = Path(directory)
    table = run_table(directory)
    out = RunPaths(directory).plots  # a sweep directory keeps its figures where a run does
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
    return [save_figure(fig, out / "sweep.png"), csv]
