"""Training: the only place that assembles a Lightning Trainer, for one run and for an ensemble alike.

    train_runs(config)   every run the config stands for (one, or one per seed of `seeds:`,
                         trained at once in one process); returns their run directories
    train_members(cs)    runs that differ only in toytasks/groups.py's per-run fields (seeds,
                         learning rates, weight decays, ...), trained at once in one process
    train(config)        a single run; returns its run directory

Layout: module.py is the LightningModule (the step), replicas.py the weights of one run or of
several stacked, callbacks.py what is recorded while training (series, resumable checkpoint,
measures), checkpoint_io.py the per-run resumable files, members.py one run's bookkeeping.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from .. import interrupts
from ..config import Config
from ..errors import ConfigError, NonFiniteLoss, ToytasksError
from ..groups import check_group, differing_beyond_seeds
from ..interrupts import Interrupted
from ..layout import RunPaths
from ..measures import MEASURES, check_measures
from ..metrics_table import read_rows
from ..resources import check_fits
from ..storage import RunLock, load_or_make_dataset, prepare_run_dir, read_meta, resumable_step, write_meta
from . import captured
from .callbacks import MeasuresCallback, ResumableCheckpoint, SeriesCallback, StepProgressBar
from .checkpoint_io import RunsCheckpointIO, settle_resumable
from .members import Member
from .module import ToyTaskModule

__all__ = ["train", "train_runs", "train_members", "global_rank"]


def train(config: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
          callbacks: Sequence[L.Callback] = ()) -> Path:
    """Train a single run and return its directory. `callbacks` run after toytasks' own."""
    if config.seeds is not None:
        raise ToytasksError("this config trains an ensemble of seeds: use toytasks.training.train_runs")
    return train_runs(config, resume, overwrite, progress, callbacks)[0]


def train_runs(config: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
               callbacks: Sequence[L.Callback] = ()) -> list[Path]:
    """Train every run of `config` (one, or one per seed of an ensemble) and return their directories.

    An existing run is never silently replaced: `overwrite` starts it over, `resume` continues it
    from its last.ckpt (a run that has finished is left as it is); without either, it is an error.
    """
    return train_members(config.members, resume, overwrite, progress, callbacks)


def train_members(members: Sequence[Config], resume: bool = False, overwrite: bool = False, progress: bool = True,
                  callbacks: Sequence[L.Callback] = ()) -> list[Path]:
    """Train single-run configs together as one stacked run (a seed ensemble, or a grid of
    hyperparameters: toytasks/groups.py says which fields may differ); as train_runs."""
    members = list(members)
    for member in members:
        check_measures(member)
    check_batch_size(members[0])
    if len(members) > 1:
        check_group(members)
    # Before anything is allocated; stand-in seeds only count the runs trained together.
    check_fits(dataclasses.replace(members[0], seeds=list(range(len(members)))) if len(members) > 1 else members[0])
    if global_rank() > 0:
        # A further DDP process (started by Lightning's launcher, or by srun): process 0 owns
        # the run directory, its lock and its files; this one trains and writes nothing.
        with quiet_lightning():
            _fit(members, [m.run_dir for m in members], resume, progress, callbacks, writer=False)
        return [m.run_dir for m in members]
    with ExitStack() as stack:
        todo = []
        for member in members:  # each run's lock first: what is in its directory cannot change meanwhile
            stack.enter_context(RunLock(member.run_dir))
            if overwrite or not (resume and read_meta(member.run_dir).get("finished")):
                prepare_run_dir(member, resume=resume, overwrite=overwrite)
                todo.append(member)
        if todo:
            stack.enter_context(quiet_lightning())
            try:
                _fit(todo, [m.run_dir for m in todo], resume, progress, callbacks, writer=True)
            except NonFiniteLoss as error:  # name the run by its place in `members`
                raise NonFiniteLoss(error.step, str(error), members.index(todo[error.run])) from None
    return [m.run_dir for m in members]


def _fit(configs: list[Config], run_dirs: list[Path], resume: bool, progress: bool, callbacks, writer: bool) -> None:
    keep_freed_memory()
    start = _start_step(run_dirs, resume, writer)
    if start == configs[0].max_steps:
        # The last resumable checkpoint is written after everything else of the run (below): the
        # process stopped after writing it, before meta.json said so.
        if writer:
            for config, run_dir in zip(configs, run_dirs):
                check_complete(config, run_dir)
                write_meta(run_dir, config, finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return
    if writer:
        datasets = [load_or_make_dataset(c, d) for c, d in zip(configs, run_dirs)]  # one copy per run directory
    else:  # the same data, without racing process 0 to write it
        datasets = [c.task.make_dataset() if c.task.finite else None for c in configs]
    members = [Member(c, d, start, dataset, writer) for c, d, dataset in zip(configs, run_dirs, datasets)]
    module = ToyTaskModule(members, datasets[0])
    config = configs[0]
    trainer = L.Trainer(
        max_steps=config.max_steps, max_epochs=-1, accelerator=config.trainer.accelerator,
        devices=config.trainer.devices, num_nodes=config.trainer.num_nodes, strategy=config.trainer.strategy,
        logger=False, plugins=[RunsCheckpointIO(module)],
        callbacks=[SeriesCallback(), ResumableCheckpoint(), MeasuresCallback(), *callbacks]
        + ([StepProgressBar(refresh_rate=max(1, config.log_every // 10))] if progress else []),
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    writer = writer and trainer.is_global_zero
    together = {}
    if len(configs) > 1:  # a seed ensemble names its seeds, a grid its runs
        together = {"grid": [c.run_id for c in configs]} if differing_beyond_seeds(configs) else \
            {"ensemble": [c.seed for c in configs]}
    # Whether the step is recorded as CUDA graphs, written now: a run stopped after its last.ckpt
    # is finished by the early return above, which does not know it.
    device = trainer.strategy.root_device
    recorded = captured.use_capture(config, device) and captured.recorded_on(device)
    metas = [write_meta(m.paths.root, m.config, device=str(device), finished=False,
                        captured_step=recorded, **together) if writer else {} for m in members]
    started, precision = time.time(), torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(config.matmul_precision)
    try:
        with interrupts.handled():
            trainer.fit(module, ckpt_path=RunPaths(run_dirs[0]).resumable if start else None, weights_only=True)
            # Last, after the series, the metrics and the summaries: a last.ckpt at max_steps
            # means the run's files are complete, so a run stopped after it needs no recomputing.
            trainer.save_checkpoint(RunPaths(run_dirs[0]).resumable)
    except Interrupted as stop:
        resumable = RunPaths(run_dirs[0]).resumable
        step = resumable_step(resumable) if resumable.exists() else 0
        raise Interrupted(stop.signum, f"{stop} ({config.experiment}); resuming continues from step {step}") from None
    except NonFiniteLoss as error:
        member = members[error.run]
        steps = [s for s in member.paths.saved_steps() if s <= error.step]
        good = f"the last good checkpoint is {member.paths.series(steps[-1])}" if steps else "no checkpoint was saved"
        remedy = "train the run alone with on_nonfinite=skip" if len(members) > 1 else "set on_nonfinite=skip"
        message = f"{error} ({config.experiment}); training stopped, {good}. Lower the learning rate, or {remedy}"
        if writer:
            write_meta(member.paths.root, member.config, failed=message)
        raise NonFiniteLoss(error.step, message, error.run) from None
    finally:
        interrupts.stop_deferring()
        torch.set_float32_matmul_precision(precision)
    if writer:
        wall = time.time() - started
        for member, meta in zip(members, metas):
            write_meta(member.paths.root, member.config, finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                       wall_seconds=round(meta.get("wall_seconds", 0.0) + wall, 2))


def _start_step(run_dirs: list[Path], resume: bool, writer: bool = True) -> int:
    """The step the runs resume from (0 for a new start); runs trained together must agree."""
    if resume and writer:
        settle_resumable(run_dirs)
    starts = {d: resumable_step(RunPaths(d).resumable) if resume and RunPaths(d).resumable.exists() else 0
              for d in run_dirs}
    if len(set(starts.values())) > 1:
        steps = ", ".join(f"{d}: {s}" for d, s in starts.items())
        raise ToytasksError(f"the runs stopped at different steps ({steps}); resume each alone with "
                            "`toytasks train RUN_DIR/config.yaml --resume`, or pass --overwrite")
    return starts[run_dirs[0]]


def check_complete(config: Config, run_dir: Path) -> None:
    """A run whose last.ckpt is at max_steps has its last metrics row and its measures' summaries
    (written before it); one stopped at its end by an older toytasks may not."""
    paths = RunPaths(run_dir)
    missing = [paths.summary(MEASURES[name].summary_file).name for name in config.measures
               if MEASURES[name].summary_file and not paths.summary(MEASURES[name].summary_file).exists()]
    if not paths.metrics.exists() or config.max_steps not in read_rows(paths.metrics):
        missing.insert(0, f"the row of step {config.max_steps} in {paths.metrics.name}")
    if missing:
        raise ToytasksError(f"{run_dir}: stopped while finishing, without {', '.join(missing)} (a run of an "
                            "older toytasks); --overwrite trains it again")


def keep_freed_memory(mmap_threshold: int = 128 * 2**20, trim_threshold: int = 256 * 2**20) -> None:
    """Have glibc's malloc keep what a step frees for the next step instead of handing it back to
    the system and faulting it in again page by page.

    glibc serves blocks above its mmap threshold with a fresh mmap each, and that threshold rises
    with use only up to 32 MiB: on configs/grokking.yaml the test set's MLP activations (8,939 x 3
    x 512 floats, 55 MB) are above it, so every step mapped, faulted in and unmapped them: 5.4
    million page faults and 12 s of system time in 150 steps on the CPU, against 0.36 million and
    1.3 s with these thresholds, at the same peak resident memory. This is process-wide and stays
    after training. Elsewhere than glibc it does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        if libc.mallopt(-3, mmap_threshold):  # M_MMAP_THRESHOLD (a fixed one also stops its rise)
            libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD: free heap kept before trimming
    except (OSError, AttributeError):
        pass


def global_rank() -> int:
    """This process's rank among the DDP processes of a run, known before the Trainer exists
    (Lightning reads it from the launcher's or SLURM's environment at import)."""
    return getattr(rank_zero_only, "rank", 0)


def check_batch_size(config: Config) -> None:
    n_train = config.task.n_train if config.task.finite else None
    if n_train is not None and config.batch_size is not None and config.batch_size > n_train:
        raise ConfigError("batch_size", f"{config.batch_size} is more than the {n_train} training "
                                        "examples; use at most that, or null for the full batch")


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
