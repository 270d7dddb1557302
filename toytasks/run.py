"""A trained run as notebooks see it: `run = load_run(path)`.

    run.config      the resolved Config the run was trained with
    run.task        its task (`run.task.p`, `run.task.make_dataset()`, ...)
    run.dataset     the stored DatasetDict (train / test), or None for sampled tasks
    run.batch(split) its `tokens` and `targets` as tensors
    run.steps       the sorted steps of the checkpoint series
    run.model_at(s) a TransformerBridge with the weights after s steps (CPU, eval mode)
    run.metrics     a pandas DataFrame: a `step` column and one column per metric
"""
from __future__ import annotations

import functools
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import Config, config_from_dict, read_yaml
from .errors import ToytasksError
from .model import apply_frozen_parts, build_model
from .series import saved_steps, series_path
from .tasks import batch_from_split
from .rundir import CONFIG, DATA_DIR


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / CONFIG).is_file():
            raise ToytasksError(f"{self.path}: not a run directory (no {CONFIG})")
        self.config: Config = config_from_dict(read_yaml(self.path / CONFIG))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, task={self.task.name}, steps={len(self.steps)})"

    @property
    def task(self):
        return self.config.task

    @functools.cached_property
    def dataset(self):
        if not self.task.finite:
            return None
        from datasets import load_from_disk

        return load_from_disk(str(self.path / DATA_DIR))

    def batch(self, split: str = "test") -> dict:
        """The `tokens` and `targets` (and `attention_mask`) tensors of a stored split."""
        if self.dataset is None:
            raise ToytasksError(f"{self.path}: {self.task.name} samples its data; use run.task.sample(n, generator)")
        return batch_from_split(self.dataset[split])

    @property
    def steps(self) -> list[int]:
        """Steps with a complete series file."""
        return saved_steps(self.path)

    def model_at(self, step: int):
        """The model after `step` optimizer steps, on the CPU, in eval mode."""
        path = series_path(self.path, step)
        if not path.exists():
            raise ToytasksError(f"{path}: no checkpoint at step {step}; saved steps: "
                                f"{_abbreviate(self.steps)}")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ToytasksError(f"{path}: unreadable checkpoint ({error})") from None
        model = build_model(self.config.model, self.task, seed=self.config.model_seed)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            raise ToytasksError(f"{path}: does not fit this run's model config ({' '.join(first[:2])})") from None
        apply_frozen_parts(model, self.config.model)
        return model.eval()

    @property
    def metrics(self):
        import pandas as pd

        return pd.read_csv(self.path / "metrics.csv")


def load_run(path: str | Path) -> Run:
    return Run(path)


def _abbreviate(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 8 else f"[{steps[0]}, {steps[1]}, ..., {steps[-1]}] ({len(steps)})"
