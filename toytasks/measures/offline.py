"""`toytasks measure RUN_DIR`: the progress measures of a saved series, written into its table.

The same code as during training, on the CPU, over `run.model_at(step)`. Every value lands in the
row of its step, overwriting what was there, so running it twice changes nothing.
"""
from __future__ import annotations

import pandas as pd

from ..errors import ToytasksError
from ..metrics import MetricsTable
from .fourier import FourierConfig, FourierMeasures
from .grokking import final_freq_rows, write_phases


def measure_run(run, progress: bool = True) -> list[str]:
    """Recompute every measure the run's config enables; returns the names written."""
    fourier = run.config.measures.fourier
    if fourier is None:
        if run.task.name != "modular_addition":
            raise ToytasksError(f"{run.path}: no progress measures apply to task {run.task.name}")
        fourier = FourierConfig()  # a run trained without measures can still get them
    if not run.steps:
        raise ToytasksError(f"{run.path}: the checkpoint series is empty")
    measures = FourierMeasures(run.task, fourier)
    table = MetricsTable(run.path / "metrics.csv")
    steps = _progress(run.steps, progress)
    for step in steps:
        table.log_metrics({k: v.item() for k, v in measures(run.model_at(step)).items()}, step=step)
    rows = final_freq_rows(measures, run.model_at, run.steps, run.model_at(run.steps[-1]))
    for step, row in rows.items():
        table.log_metrics(row, step=step)
    table.save()
    write_phases(run.path, pd.read_csv(run.path / "metrics.csv"))
    return sorted({name for row in table.rows.values() for name in row if name.startswith("fourier/")})


def _progress(steps, show: bool):
    if not show:
        return steps
    from tqdm.auto import tqdm

    return tqdm(steps, desc="measuring", unit="ckpt")
