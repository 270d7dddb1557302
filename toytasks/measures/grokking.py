"""Wiring of the Fourier measures into a run: during training, after it, and offline.

During training the callback logs the live measures (key frequencies of the current checkpoint).
When training ends, it recomputes the restricted and excluded losses over the whole saved series
with the final model's key frequencies (as the paper plots them) and writes the phase estimates
to `phases.json`. `toytasks measure RUN_DIR` does all of it again from the saved series.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from safetensors.torch import load_file

from ..model import build_model
from ..files import write_atomically
from ..series import saved_steps, series_path
from .callback import MeasureCallback
from .fourier import FourierMeasures
from .phases import estimate_phases

PHASES = "phases.json"


def final_freq_rows(measures: FourierMeasures, model_at: Callable[[int], torch.nn.Module],
                    steps: Iterable[int], final_model) -> dict[int, dict[str, float]]:
    """The `_final_freqs` losses at every step, with the final model's key frequencies."""
    mask = measures.final_key_mask(final_model)
    rows = {}
    for step in steps:
        model = model_at(step)
        rows[step] = {k: v.item() for k, v in measures(model, final_mask=mask, live=False).items()}
    return rows


def write_phases(run_dir: Path, metrics: pd.DataFrame) -> dict:
    phases = estimate_phases(metrics)
    write_atomically(run_dir / PHASES, lambda tmp: Path(tmp).write_text(json.dumps(phases, indent=2)))
    return phases


class FourierCallback(MeasureCallback):
    def __init__(self, measures: FourierMeasures, run_dir: Path, config, steps, every=None):
        super().__init__(measures, steps=steps, every=every)
        self.run_dir, self.config = Path(run_dir), config

    def finish(self, model, loggers) -> None:
        """The `_final_freqs` losses over the saved series, and phases.json."""
        config, device = self.config, model.W_E.device
        scratch = build_model(config.model, config.task, config.model_seed, device=device).eval()

        def model_at(step: int):
            scratch.load_state_dict(load_file(str(series_path(self.run_dir, step)), device=str(device)))
            return scratch

        was_training = model.training
        rows = final_freq_rows(self.measure, model_at, saved_steps(self.run_dir), model.eval())
        model.train(was_training)
        for step, row in rows.items():
            for logger in loggers:
                logger.log_metrics(row, step=step)
        for logger in loggers:
            logger.save()
        write_phases(self.run_dir, pd.read_csv(self.run_dir / "metrics.csv"))
