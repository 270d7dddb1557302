"""Train one config into its run directory: the only place that assembles a Lightning Trainer."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from .config import Config
from .errors import ConfigError, NonFiniteLoss, ToytasksError, first_line
from .metrics import MetricsTable
from .module import ToyTaskModule
from .rundir import RunLock, load_or_make_dataset, prepare_run_dir, write_meta
from .series import (RESUMABLE, CheckpointSeries, ResumableCheckpoint, checkpoint_steps, saved_steps,
                     series_path)
from .tasks import batch_from_split


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the newest metrics the module copied out (never forcing a sync)."""

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"{pl_module.config.experiment}")

    def get_metrics(self, trainer, pl_module):
        shown = ("train/loss", "val/loss", "val/acc")
        return {k: f"{v:.3g}" for k, v in pl_module.latest.items() if k in shown}


def train(config: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
          callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train `config` and return its run directory. `callbacks` run after toytasks' own."""
    if config.seeds is not None:
        raise ToytasksError("this config trains an ensemble of seeds: use toytasks.ensemble.train_ensemble")
    check_batch_size(config)
    if global_rank() > 0:
        # A further DDP process (started by Lightning's launcher, or by srun): process 0 owns
        # the run directory, its lock and its files; this one trains and writes nothing.
        with quiet_lightning():
            return _train(config, config.run_dir, resume, progress, callbacks)
    run_dir = prepare_run_dir(config, resume=resume, overwrite=overwrite)
    with RunLock(run_dir), quiet_lightning():
        return _train(config, run_dir, resume, progress, callbacks)


def global_rank() -> int:
    """This process's rank among the DDP processes of a run, known before the Trainer exists
    (Lightning reads it from the launcher's or SLURM's environment at import)."""
    return getattr(rank_zero_only, "rank", 0)


def _train(config: Config, run_dir: Path, resume: bool, progress: bool, callbacks: Sequence[L.Callback]) -> Path:
    if global_rank() == 0:
        dataset = load_or_make_dataset(config, run_dir)
    else:  # the same data, without racing process 0 to write it
        dataset = config.task.make_dataset() if config.task.finite else None
    module = ToyTaskModule(
        config,
        train_split=None if dataset is None else batch_from_split(dataset["train"]),
        eval_split=batch_from_split(dataset["test"]) if dataset is not None else held_out_batch(config),
    )
    resume_from = run_dir / RESUMABLE if resume and (run_dir / RESUMABLE).exists() else None
    start_step = resumable_step(resume_from) if resume_from else 0
    # A killed run may have written rows past its resumable checkpoint; the resumed run writes
    # them again, and re-evaluates the row of its first step (see ToyTaskModule.on_train_start).
    table = MetricsTable(run_dir / "metrics.csv")
    table.truncate_after(start_step - 1)
    trainer = L.Trainer(
        max_steps=config.max_steps, max_epochs=-1, accelerator=config.trainer.accelerator,
        devices=config.trainer.devices, num_nodes=config.trainer.num_nodes, strategy=config.trainer.strategy,
        logger=[TensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False,
                                  purge_step=start_step or None), table],
        callbacks=[CheckpointSeries(run_dir, checkpoint_steps(config.checkpoints, config.max_steps)),
                   ResumableCheckpoint(run_dir, config.checkpoints.resume_every, config.max_steps),
                   *measure_callbacks(config, run_dir, dataset), *callbacks]
        + ([StepProgressBar(refresh_rate=max(1, config.log_every // 10))] if progress else []),
        gradient_clip_val=config.optim.grad_clip, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress, num_sanity_val_steps=0,
        limit_val_batches=0, log_every_n_steps=config.log_every,
    )
    writer = trainer.is_global_zero
    meta = write_meta(run_dir, config, device=str(trainer.strategy.root_device), finished=False) if writer else {}
    started, precision = time.time(), torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(config.matmul_precision)
    try:
        trainer.fit(module, ckpt_path=resume_from, weights_only=True)
    except NonFiniteLoss as error:
        steps = [s for s in saved_steps(run_dir) if s <= error.step]
        good = f"the last good checkpoint is {series_path(run_dir, steps[-1])}" if steps else "no checkpoint was saved"
        message = (f"{error} ({config.experiment}); training stopped, {good}. "
                   "Lower the learning rate, or set on_nonfinite=skip")
        if writer:
            write_meta(run_dir, config, failed=message)
        raise NonFiniteLoss(error.step, message) from None
    finally:
        torch.set_float32_matmul_precision(precision)
    if writer:
        write_meta(run_dir, config, finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   wall_seconds=round(meta.get("wall_seconds", 0.0) + time.time() - started, 2))
    return run_dir


def held_out_batch(config: Config, n: int = 512) -> dict:
    """A sampled task's fixed evaluation batch, from a generator of its own (never the training one)."""
    return config.task.sample(n, torch.Generator().manual_seed(config.seed + 1_000_003))


def check_batch_size(config: Config) -> None:
    n_train = config.task.n_train if config.task.finite else None
    if n_train is not None and config.batch_size is not None and config.batch_size > n_train:
        raise ConfigError("batch_size", f"{config.batch_size} is more than the {n_train} training "
                                        "examples; use at most that, or null for the full batch")


def resumable_step(path: Path) -> int:
    """The step a resumable checkpoint was written at, read without unpickling code."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception as error:  # truncated, corrupted, or not a checkpoint at all
        raise ToytasksError(f"{path}: cannot resume from this checkpoint ({first_line(error)}); "
                            "pass --overwrite to start over") from None


def measure_callbacks(config: Config, run_dir: Path, dataset) -> list[L.Callback]:
    """The progress measures the config switches on, evaluated on the training device."""
    callbacks = []
    steps = checkpoint_steps(config.checkpoints, config.max_steps)
    fourier = config.measures.fourier
    if fourier is not None:
        from .measures.fourier import FourierMeasures
        from .measures.grokking import FourierCallback

        callbacks.append(FourierCallback(FourierMeasures(config.task, fourier), run_dir, config, steps,
                                         fourier.every))
    heads = config.measures.heads
    if heads is not None:
        from .measures.heads import HeadMeasures, HeadsCallback

        callbacks.append(HeadsCallback(HeadMeasures(config.task, heads, config.seed), run_dir, steps, heads.every))
    brackets = config.measures.brackets
    if brackets is not None:
        from .measures.brackets import BracketMeasures
        from .measures.callback import MeasureCallback

        callbacks.append(MeasureCallback(BracketMeasures(config.task, dataset["test"]), steps, brackets.every))
    return callbacks


class quiet_lightning:
    """Silence Lightning's start-up chatter ("GPU available: ...", tips) and known-harmless warnings."""

    def __enter__(self):
        self._levels = {}
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            self._levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")  # on_nonfinite=skip
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
