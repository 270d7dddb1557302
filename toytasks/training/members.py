"""One run among those trained in a process: a single run, or one seed of an ensemble."""
from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ..config import Config
from ..layout import RunPaths
from ..measures import build_measures
from ..metrics_table import MetricsTable
from ..model import build_model
from .device_metrics import DeviceMetrics


class Member:
    """A run's config, run directory, loggers and measures, and the TransformerLens model that holds
    its weights: the trained model itself for a single run, a copy that an ensemble fills at the
    steps where the weights are saved or measured."""

    def __init__(self, config: Config, run_dir: Path, start_step: int, dataset=None, writer: bool = True):
        self.config, self.paths = config, RunPaths(run_dir)
        self.model = build_model(config.model, config.task, seed=config.model_seed)  # its initial weights
        self.metrics = DeviceMetrics()  # its measures' values; the per-step metrics are the module's
        self.measures = build_measures(config, dataset)
        self.series_steps = frozenset(config.checkpoints.schedule(config.max_steps))
        self.loggers: list = []
        self.table = None
        if writer:  # with several DDP processes, process 0 writes
            # A resumed run writes the rows from its first step again (see ToyTaskModule.on_train_start).
            self.table = MetricsTable(self.paths.metrics)
            self.table.truncate_after(start_step - 1)
            tensorboard = TensorBoardLogger(self.paths.tensorboard.parent, name=self.paths.tensorboard.name,
                                            version="", default_hp_metric=False, purge_step=start_step or None)
            self.loggers = [tensorboard, self.table]

    def native_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.original_model.named_parameters())
