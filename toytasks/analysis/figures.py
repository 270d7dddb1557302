"""The figures `toytasks plot` writes.

For a run (`toytasks plot RUN_DIR`): the loss and accuracy curves, then each applicable measure's
own figures (toytasks/measures/), and those of the optional measures it has values of, into
RUN_DIR/plots/.

For a directory of runs, e.g. a sweep's (`toytasks plot SWEEP_DIR`): each run's headline number
(its task's `headline`: the grokking step, the final induction score, ...) against the swept
value, with the median and spread over seeds, in SWEEP_DIR/plots/sweep.png, the numbers in
sweep.csv and one row per setting in sweep_summary.csv beside it. The swept values are the config
columns that differ between runs, seeds aside. One or two numeric ones: the one with the most
values is the x axis, the other splits the runs into lines. More, or a switch (a sweep's arms):
each setting is a category on the x axis, named by what it changes from the config defaults.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ToytasksError
from ..files import make_dir, write_atomically
from ..layout import RunPaths
from ..measures import MEASURES, applicable
from ..phases import milestones
from ..plots import phase_lines, plt, save_figure


def plot_run(run) -> list[Path]:
    """Every figure of a run, written into its plots/ directory; returns their paths."""
    metrics = run.metrics
    if metrics.empty or not run.steps:
        raise ToytasksError(f"{run.path}: nothing to plot yet (no metrics logged, or no checkpoint saved)")
    out = make_dir(run.paths.plots)
    figures = {"loss.png": loss_curves(metrics, milestones(metrics))}
    names = applicable(run.config)
    # and the optional measures computed for it (`toytasks measure RUN_DIR --with ...`)
    names += [name for name in applicable(run.config, include_optional=True) if name not in names
              and any(column.startswith(MEASURES[name].prefixes) for column in metrics.columns)]
    for name in names:
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
    summary = runs.summary  # broken runs left out, with a warning
    by_path = {str(run.path): run for run in runs}
    labels, headline = set(), []
    for _, row in summary.iterrows():
        label, column = by_path[row["run"]].task.headline
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
    """Each run's headline (dots) and, per setting, the median over seeds and the min-max range of
    the runs that reached it. Runs that never reach the headline (NaN, e.g. never grokked) are an x
    at the top, counted in the title; the median counts them as later than every run that did.

    Against the swept value when one or two numeric config values vary (the second as lines);
    otherwise, e.g. arms that each switch something on, one category per combination of values."""
    swept = swept_columns(table)
    if is_categorical(table, swept):
        return _plot_categories(table, swept, label)
    x, lines = (swept[0], swept[1:]) if swept else (None, [])
    table = table.assign(
        _x=table[x] if x else "all runs",
        _line=table[lines].astype(str).apply(lambda r: ", ".join(f"{c}={r[c]}" for c in lines), axis=1) if lines else "")
    numeric = x is not None
    fig, ax = plt.subplots(figsize=(8, 5))
    for line_label, group in table.groupby("_line"):
        stats = group.groupby("_x")["headline"].agg([median_reached, "min", "max"]).dropna()
        errors = [stats["median_reached"] - stats["min"], stats["max"] - stats["median_reached"]]
        drawn = ax.errorbar(stats.index, stats["median_reached"], yerr=errors, marker="o", capsize=4,
                            label=line_label or None)
        reached = group[group["headline"].notna()]  # matplotlib cannot draw a NaN at a categorical x
        ax.scatter(reached["_x"], reached["headline"], color=drawn[0].get_color(), alpha=0.4, s=18)
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
    ax.set(xlabel=x or "", ylabel=table.attrs.get("headline", label), title=_title(table, seeds))
    if lines:
        ax.legend(fontsize=8)
    return fig


def is_categorical(table: pd.DataFrame, swept: list[str]) -> bool:
    """Whether the sweep's settings are categories (switches, several values at once) rather than
    values along an axis: more than two columns vary, or one that is not a number does."""
    numeric = [pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]) for c in swept]
    return len(swept) > 2 or not all(numeric)


def median_reached(values: pd.Series) -> float:
    """The median over runs, a run that never reached the headline (NaN) counting as later than
    every run that did; NaN when the median run never reached it."""
    ranked = sorted(values.fillna(float("inf")))
    if not ranked:
        return float("nan")
    middle = ranked[(len(ranked) - 1) // 2: len(ranked) // 2 + 1]
    median = sum(middle) / len(middle)
    return median if median != float("inf") else float("nan")


def settings(table: pd.DataFrame, swept: list[str]) -> tuple[pd.Series, list[str], dict[str, str]]:
    """Each run's setting as a short name: its swept values that differ from the config's defaults
    (`orthograd`, `loss=stablemax`, `grokfast.filter=ema`, then numbers: `weight_decay=0`,
    `lr=0.005`), one per line, `baseline` when none does; the settings in plotting order (those
    switching the same things on together, by their numbers); a colour for each of those groups."""
    from ..config import field_default

    def is_number(column: str) -> bool:  # a value along an axis, not a switch or a switch's option
        parent = column.rsplit(".", 1)[0]
        return (pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(table[column])
                and not (column.count(".") > 1 and field_default(parent) is None))

    def parts(row, columns) -> list[str]:
        named = []
        for column in columns:
            value = row[column]
            if value is None or (isinstance(value, float) and math.isnan(value)) or value == field_default(column):
                continue
            short = column.split(".", 1)[1] if "." in column else column
            if isinstance(value, (bool, np.bool_)):
                named.append(short if value else f"{short}=false")
            else:
                named.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
        return named

    order = table.attrs.get("config_columns", list(table.columns))
    columns = sorted(swept, key=lambda c: (is_number(c), order.index(c) if c in order else len(order)))
    switches = [c for c in columns if not is_number(c)]
    names = table.apply(lambda row: "\n".join(parts(row, columns)) or "baseline", axis=1)
    groups = table.apply(lambda row: " ".join(parts(row, switches)), axis=1)
    numbers = [c for c in columns if is_number(c)]
    ranked = table.assign(_name=names, _group=groups).sort_values(["_group", *numbers], na_position="first")
    colours = {group: f"C{i % 10}" for i, group in enumerate(dict.fromkeys(ranked["_group"]))}
    return names, ranked["_name"].drop_duplicates().tolist(), dict(zip(names, groups.map(colours)))


def _plot_categories(table: pd.DataFrame, swept: list[str], label: str):
    names, order, colours = settings(table, swept)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.05 * len(order) + 1.5), 6))
    for i, name in enumerate(order):
        group, colour = table[names == name], colours[name]
        values = group["headline"].to_numpy(dtype=float)
        offsets = (np.arange(len(values)) - (len(values) - 1) / 2) * 0.08  # seeds side by side
        reached = ~np.isnan(values)
        ax.scatter(i + offsets[reached], values[reached], color=colour, s=22, zorder=3)
        never = int((~reached).sum())
        if never:  # never reached: an x at the top, with how many
            ax.scatter([i], [1.0], transform=ax.get_xaxis_transform(), marker="x", s=45, color=colour, clip_on=False)
            ax.annotate(f"{never}", (i, 1.0), xycoords=("data", "axes fraction"), xytext=(6, -4),
                        textcoords="offset points", fontsize=7, color=colour)
        if reached.any():
            ax.vlines(i, values[reached].min(), values[reached].max(), color=colour, alpha=0.5)
        median = median_reached(group["headline"])
        if median == median:
            ax.hlines(median, i - 0.3, i + 0.3, color=colour, linewidth=2)
    ax.set_xticks(range(len(order)), order, fontsize=7)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(bottom=0)
    seeds = table.groupby(names)["seed"].nunique().max()
    ax.set(ylabel=table.attrs.get("headline", label), title=_title(table, seeds, per="setting"),
           xlabel="setting: what differs from the config defaults")
    fig.tight_layout()
    return fig


def _title(table: pd.DataFrame, seeds: int, per: str = "point") -> str:
    title = (f"{len(table)} runs, up to {seeds} seed{'s' if seeds > 1 else ''} per {per}:\n"
             "median (bar), min-max of those that reached it, each run (dot)")
    missing = int(table["headline"].isna().sum())
    if missing:
        title += f"\n{missing} run(s) never reached it (x at the top)"
    return title


def sweep_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: its swept values (or name), the runs, how many reached the headline,
    the median (NaN when the median run never reached it: see median_reached), the min and max of
    those that reached it, and the median step of memorisation (train accuracy first >= 0.99)."""
    swept = swept_columns(table)
    if is_categorical(table, swept):
        names, order, _ = settings(table, swept)
        groups = [({"setting": name.replace("\n", " ")}, table[names == name]) for name in order]
    else:
        groups = [(dict(zip(swept, key if isinstance(key, tuple) else (key,))), group)
                  for key, group in (table.groupby(swept, dropna=False) if swept else [((), table)])]
    rows = []
    for row, group in groups:
        reached = group["headline"].dropna()
        row.update(runs=len(group), reached=len(reached), median=median_reached(group["headline"]),
                   min=reached.min() if len(reached) else None, max=reached.max() if len(reached) else None)
        if "memorisation_end" in group:
            row["memorisation_median"] = median_reached(pd.to_numeric(group["memorisation_end"], errors="coerce"))
        rows.append(row)
    return pd.DataFrame(rows)


def plot_sweep_dir(directory: str | Path) -> list[Path]:
    """Write SWEEP_DIR/plots/sweep.png and sweep.csv; returns their paths."""
    directory = Path(directory)
    table = run_table(directory)
    out = make_dir(RunPaths(directory).plots)  # a sweep directory keeps its figures where a run does
    csv = out / "sweep.csv"
    swept = swept_columns(table)
    listed = table.assign(setting=settings(table, swept)[0].str.replace("\n", " ")) if is_categorical(table, swept) else table
    columns = ["run", *(["setting"] if "setting" in listed else []), *swept, "seed", "finished", "headline"]
    write_atomically(csv, lambda tmp: listed[columns].to_csv(tmp, index=False))
    finished = table[table["finished"]]
    if finished.empty:
        raise ToytasksError(f"{directory}: none of its {len(table)} runs has finished yet")
    finished.attrs = table.attrs
    summary = out / "sweep_summary.csv"
    sweep_summary(finished).to_csv(summary, index=False)
    fig = plot_sweep(finished)
    if len(finished) < len(table):
        fig.axes[0].set_title(f"{fig.axes[0].get_title()}\n({len(table) - len(finished)} unfinished run(s) left out)")
    return [save_figure(fig, out / "sweep.png"), csv, summary]
