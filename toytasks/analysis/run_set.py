"""A set of runs (seeds, a sweep) as tidy DataFrames: `runs = load_runs("checkpoints/sweep")`.

    runs.runs       the Run objects, sorted by path (also `len(runs)`, `for run in runs`)
    runs.configs    one row per run: `run` (its path) and the flattened config, one dotted
                    column per field (`optim.weight_decay`, `task.p`, `seed`, ...)
    runs.varying    the config columns whose values differ between the runs
    runs.metrics    every run's metrics table stacked, with `run` and the config columns joined on
    runs.summary    one row per run: its config columns, when it memorised and grokked
                    (toytasks/phases.py), the summaries of the measures that apply to it (the
                    grokking phases, the induction onset, ...) and the final value of each metric
                    as `final/<metric>`

so that, for a weight-decay sweep, the grokking step against weight decay is one line:

    load_runs("checkpoints/sweep").summary.plot.scatter(x="optim.weight_decay", y="cleanup_end")

A run that cannot be read (a damaged config.yaml, metrics.csv or meta.json) is left out of the
tables with one warning naming it and the cause; the other runs' rows stand.
"""
from __future__ import annotations

import functools
import glob
import warnings
from pathlib import Path

from ..errors import ToytasksError, ToytasksWarning, first_line
from ..layout import RunPaths
from ..measures import MEASURES, applicable
from ..phases import milestones
from ..storage import read_meta
from .run import Run

# Where a run was written, not what it is: left out of `varying`.
_NOT_VARYING = ("run", "out_dir")


def load_runs(pattern_or_dir) -> "RunSet":
    """The runs under a directory (searched recursively), matching a glob pattern, or in a list of
    paths (each a run directory or a directory to search)."""
    items = [pattern_or_dir] if isinstance(pattern_or_dir, (str, Path)) else list(pattern_or_dir)
    found: set[Path] = set()
    for item in items:
        paths = [Path(item)] if Path(item).exists() else [Path(p) for p in glob.glob(str(item), recursive=True)]
        for path in paths:
            found |= _run_dirs(path)
    if not found:
        raise ToytasksError(f"no run directory (holding a config.yaml) found in {pattern_or_dir}")
    runs = []
    for path in sorted(found):
        try:
            runs.append(Run(path))
        except ToytasksError as error:
            left_out(path, error)
    if not runs:
        raise ToytasksError(f"none of the {len(found)} run directories in {pattern_or_dir} can be read")
    return RunSet(runs)


def left_out(path, error: Exception) -> None:
    """One warning for a run left out of a table (shown once per run and cause)."""
    warnings.warn(f"left out {path}: {first_line(error)}", ToytasksWarning)


def latest_run(experiment: str, out_dir: str = "checkpoints") -> Path:
    """The most recently started run of an experiment: `out_dir/experiment/<run_id>`, looked up
    from the current directory and then its parents (a notebook's kernel starts in notebooks/)."""
    for root in [Path.cwd(), *Path.cwd().parents]:
        runs = sorted(_run_dirs(root / out_dir / experiment), key=_started)
        if runs:
            return runs[-1]
    raise ToytasksError(f"no run of {experiment} in {out_dir}/ (here or above {Path.cwd()}); train one "
                        f"with `.venv/bin/toytasks train configs/{experiment}.yaml`")


class RunSet:
    def __init__(self, runs):
        self.runs: list[Run] = list(runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def __getitem__(self, index: int) -> Run:
        return self.runs[index]

    def __repr__(self) -> str:
        return f"RunSet({len(self)} runs; varying: {', '.join(self.varying) or 'nothing'})"

    @functools.cached_property
    def configs(self):
        import pandas as pd

        return pd.DataFrame([{"run": str(run.path), **flatten(run.config.to_dict())} for run in self.runs])

    @property
    def varying(self) -> list[str]:
        # repr() compares lists, None and missing fields (NaN) as the values they are.
        return [c for c in self.configs.columns
                if c not in _NOT_VARYING and self.configs[c].map(repr).nunique() > 1]

    @property
    def metrics(self):
        import pandas as pd

        tables = [table.assign(run=str(run.path)) for run, table in _readable(self.runs, lambda run: run.metrics)]
        if not tables:
            raise ToytasksError(f"none of the {len(self)} runs has a readable metrics table")
        return pd.concat(tables, ignore_index=True).merge(self.configs, on="run", how="left")

    @property
    def summary(self):
        import pandas as pd

        rows = [row for _, row in _readable(self.runs, _summary)]
        if not rows:
            raise ToytasksError(f"none of the {len(self)} runs can be summarised")
        return self.configs.merge(pd.DataFrame(rows), on="run")


def flatten(data: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists become tuples (comparable, hashable)."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _summary(run: Run) -> dict:
    metrics = run.metrics
    row = {"run": str(run.path), "finished": bool(read_meta(run.path).get("finished")), **milestones(metrics)}
    for name in applicable(run.config):  # from the table, so also for a run trained without the measure
        row.update(MEASURES[name].summary(run.measure_options(name), metrics))
    for column in metrics.columns.drop("step"):
        values = metrics[column].dropna()
        row[f"final/{column}"] = values.iloc[-1] if len(values) else float("nan")
    return row


def _readable(runs, read):
    """(run, read(run)) for each run that can be read; the others are left out with a warning."""
    for run in runs:
        try:
            yield run, read(run)
        except ToytasksError as error:
            left_out(run.path, error)


def _run_dirs(path: Path) -> set[Path]:
    if RunPaths(path).is_run():
        return {path}
    name = RunPaths(path).config.name
    return {config.parent for config in path.rglob(name)} if path.is_dir() else set()


def _started(path: Path) -> tuple:
    """meta.json's start time (second resolution), then the directory's modification time."""
    try:
        started = read_meta(path).get("started", "")
    except ToytasksError:
        started = ""
    return str(started), path.stat().st_mtime
