"""`toytasks measure RUN_DIR`: the progress measures of a saved series, written into its table.

The same measures as during training (toytasks/measures/), on the CPU, over `run.model_at(step)`:
those the run's config names, and every other that applies to its task and model. Every value
lands in the row of its step, overwriting what was there, so running it twice changes nothing. An
expensive measure (`--with llc`) hands over its rows one checkpoint at a time, and each is saved at
once: an interrupted run keeps them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ..errors import ToytasksError
from ..files import remove_temporaries
from ..measures import MEASURES, applicable
from ..metrics_table import MetricsTable
from ..storage import RunLock, read_meta, write_json


def measure_run(run, progress: bool = True, extra: Sequence[str] = (), options: Mapping[str, dict] | None = None,
                only: Sequence[str] = ()) -> list[str]:
    """Recompute every measure that applies to the run and the optional ones named in `extra` (or
    just those named in `only`), with `options[name]` over a measure's configured options; returns
    the metric names written."""
    if not read_meta(run.path).get("finished"):  # a live trainer would overwrite what this writes
        raise ToytasksError(f"{run.path}: the run has not finished (it is training, or was interrupted); "
                            "finish it (`toytasks train RUN_DIR/config.yaml --resume`) before measuring it")
    steps = run.steps
    if not steps:
        raise ToytasksError(f"{run.path}: the checkpoint series is empty")
    names = list(dict.fromkeys(only)) or [*applicable(run.config), *(n for n in extra if n not in run.config.measures)]
    if not names:
        raise ToytasksError(f"{run.path}: no progress measures apply to task {run.task.name}")
    unused = sorted(set(options or {}) - set(names))
    if unused:
        raise ToytasksError(f"options for {unused[0]}, which is not computed here (add --with {unused[0]})")
    with RunLock(run.path, purpose="toytasks measure"):  # training writes these files too
        remove_temporaries(run.path)
        return _measure(run, names, steps, progress, options or {})


def _measure(run, names: list[str], steps: list[int], progress: bool, options: Mapping[str, dict]) -> list[str]:
    table = MetricsTable(run.paths.metrics)
    measures = [run.measure(name, options.get(name)) for name in names]
    for measure in measures:
        model_at = _with_progress(run.model_at, len(steps), f"measuring {measure.name}", progress)
        rows = measure.measure_series(model_at, steps)
        try:
            for step, row in rows.items() if isinstance(rows, dict) else rows:
                table.log_metrics(row, step=step)
                if not isinstance(rows, dict):  # an expensive measure's rows, kept as they come
                    table.save()
        finally:
            model_at.close()
            table.save()
    metrics = table.frame()
    for measure in measures:
        if measure.summary_file:
            write_json(run.paths.summary(measure.summary_file), measure.summary(measure.options, metrics))
    prefixes = tuple(prefix for name in names for prefix in MEASURES[name].prefixes)
    return sorted({name for row in table.rows.values() for name in row if name.startswith(prefixes)})


class _with_progress:
    """run.model_at, advancing a progress bar at each checkpoint loaded for the first time."""

    def __init__(self, model_at, total: int, name: str, show: bool):
        from tqdm import tqdm  # the text bar: tqdm.auto asks for ipywidgets in notebooks

        self.model_at, self.seen = model_at, set()
        self.bar = tqdm(total=total, desc=name, unit="ckpt", disable=not show)

    def __call__(self, step: int):
        if step not in self.seen:
            self.seen.add(step)
            self.bar.update()
        return self.model_at(step)

    def close(self) -> None:
        self.bar.close()
