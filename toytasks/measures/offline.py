"""`toytasks measure RUN_DIR`: the progress measures of a saved series, written into its table.

The same code as during training, on the CPU, over `run.model_at(step)`. Every value lands in the
row of its step, overwriting what was there, so running it twice changes nothing.
"""
from __future__ import annotations

import pandas as pd

from ..errors import ToytasksError
from ..metrics import MetricsTable
from ..run import checkpoint_progress
from .brackets import BracketMeasures, BracketsConfig
from .fourier import FourierConfig, FourierMeasures
from .grokking import write_phases
from .heads import HeadMeasures, HeadsConfig, write_heads_summary


def measure_run(run, progress: bool = True) -> list[str]:
    """Recompute every measure that applies to the run; returns the names written."""
    if not run.steps:
        raise ToytasksError(f"{run.path}: the checkpoint series is empty")
    table = MetricsTable(run.path / "metrics.csv")
    fourier, heads, brackets = (run.config.measures.fourier, run.config.measures.heads,
                                run.config.measures.brackets)
    if run.task.name == "modular_addition":  # a run trained without measures can still get them
        fourier = fourier or FourierConfig()
    elif run.task.name == "brackets":
        brackets = brackets or BracketsConfig()
    elif not run.task.finite and run.config.model.attention == "causal":
        heads = heads or HeadsConfig()
    if fourier is None and heads is None and brackets is None:
        raise ToytasksError(f"{run.path}: no progress measures apply to task {run.task.name}")
    if fourier is not None:
        measures = FourierMeasures(run.task, fourier)
        final_mask = measures.final_key_mask(run.model_at(run.steps[-1]))
        for step in checkpoint_progress(run.steps, progress, "measuring"):  # one load and one forward pass per checkpoint
            values = measures(run.model_at(step), final_mask=final_mask)
            table.log_metrics({k: v.item() for k, v in values.items()}, step=step)
    plain = []  # measures that are a function of one checkpoint alone
    if heads is not None:
        plain.append(HeadMeasures(run.task, heads, run.config.seed))
    if brackets is not None:
        plain.append(BracketMeasures(run.task, run.dataset["test"]))
    for measures in plain:
        for step in checkpoint_progress(run.steps, progress, "measuring"):
            table.log_metrics({k: v.item() for k, v in measures(run.model_at(step)).items()}, step=step)
    table.save()
    if fourier is not None:
        write_phases(run.path, pd.read_csv(run.path / "metrics.csv"))
    if heads is not None:
        write_heads_summary(run.path, heads)
    prefixes = ("fourier/", "heads/", "icl/", "attn/", "pos_loss/", "brackets/")
    return sorted({name for row in table.rows.values() for name in row if name.startswith(prefixes)})
