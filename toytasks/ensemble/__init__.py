"""Seed ensembles: the seeds of one config trained at once, in one process, on one device.

A config with `seeds: [0, 1, 2]` trains its seeds together. Their parameters are stacked along a
new first dimension; one forward pass runs every seed with `torch.func.vmap` over
`functional_call` of the bridge's native module; one AdamW steps the stacked tensors. AdamW is
elementwise and the loss is the sum of the seeds' losses, so each seed gets its own gradient and
its own update: N independent runs, computed together. What would couple the seeds is kept per
seed: gradient clipping (each seed's own norm), the data (each seed draws from its own generator
exactly what its single run draws; a full batch is shared), a sampled task's held-out batch,
and the non-finite-loss check. Frozen parameters are stacked but never given to the optimizer.

Each seed writes an ordinary run directory, the one its single run would write: config.yaml
with `seed: s` (so the same run_id), the series at the same steps, metrics.csv, tb/, the
measures (each seed's model is copied into its own TransformerBridge at the checkpoint steps),
phases.json / heads.json, and meta.json (with an `ensemble` field). Its `last.ckpt` is in the
single-run format too: `EnsembleCheckpointIO` splits the ensemble's Lightning checkpoint per
seed when saving and stacks the seeds' files when loading. So a killed ensemble resumes with
`--resume` (its unfinished seeds must have stopped at the same step, as they do unless the kill
fell between two seeds' writes), and any seed also resumes alone with
`toytasks train RUN_DIR/config.yaml --resume`.

Results equal single runs to float tolerance: batched matmuls may add up in another order (the
unembedding's gradient over a full batch does, on our CPU; with small sampled batches the seeds
matched their single runs bit for bit). Layout: this file trains; module.py is the
LightningModule; checkpoint.py splits and stacks the resumable checkpoints. Not supported: `on_nonfinite: skip` (one optimizer step updates every seed; a non-finite
loss in any seed stops the ensemble) and more than one device.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ..config import Config
from ..errors import NonFiniteLoss, ToytasksError
from ..metrics import DeviceMetrics, MetricsTable
from ..model import build_model
from ..rundir import RunLock, load_or_make_dataset, prepare_run_dir, read_meta, write_meta
from ..series import RESUMABLE, checkpoint_steps, saved_steps, series_path
from ..train import StepProgressBar, check_batch_size, measure_callbacks, quiet_lightning, resumable_step
from .checkpoint import EnsembleCheckpointIO
from .module import EnsembleBatches, EnsembleModule

__all__ = ["EnsembleBatches", "EnsembleModule", "Member", "train_ensemble"]


def train_ensemble(config: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
                   callbacks: Sequence[L.Callback] = ()) -> list[Path]:
    """Train every seed of `config.seeds` at once; returns their run directories.

    The flags mean what they mean for one run, seed by seed; with `resume`, seeds that finished
    earlier are left as they are and the others continue together.
    """
    if config.seeds is None:
        raise ToytasksError("an ensemble needs `seeds`: a list of seeds to train at once")
    check_batch_size(config)
    todo = [m for m in config.members
            if overwrite or not (resume and read_meta(m.run_dir).get("finished"))]
    if todo:
        run_dirs = [prepare_run_dir(m, resume=resume, overwrite=overwrite) for m in todo]
        with ExitStack() as stack:
            for run_dir in run_dirs:
                stack.enter_context(RunLock(run_dir))
            stack.enter_context(quiet_lightning())
            _train(todo, run_dirs, resume, progress, callbacks)
    return [m.run_dir for m in config.members]


def _train(configs: list[Config], run_dirs: list[Path], resume: bool, progress: bool, callbacks) -> None:
    starts = {run_dir: resumable_step(run_dir / RESUMABLE) if resume and (run_dir / RESUMABLE).exists() else 0
              for run_dir in run_dirs}
    if len(set(starts.values())) > 1:
        steps = ", ".join(f"{d}: {s}" for d, s in starts.items())
        raise ToytasksError(f"the seeds stopped at different steps ({steps}); resume each alone with "
                            "`toytasks train RUN_DIR/config.yaml --resume`, or pass --overwrite")
    start = starts[run_dirs[0]]
    datasets = [load_or_make_dataset(c, d) for c, d in zip(configs, run_dirs)]  # one copy per run directory
    members = [Member(c, d, start, dataset) for c, d, dataset in zip(configs, run_dirs, datasets)]
    module = EnsembleModule(members, datasets[0])
    config = configs[0]
    trainer = L.Trainer(
        max_steps=config.max_steps, max_epochs=-1, accelerator=config.trainer.accelerator, devices=1,
        logger=False, plugins=[EnsembleCheckpointIO(module)],
        callbacks=[*callbacks] + ([StepProgressBar(refresh_rate=max(1, config.log_every // 10))] if progress else []),
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    seeds = [c.seed for c in configs]
    metas = [write_meta(m.run_dir, m.config, device=str(trainer.strategy.root_device), finished=False,
                        ensemble=seeds) for m in members]
    started, precision = time.time(), torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(config.matmul_precision)
    try:
        trainer.fit(module, ckpt_path=run_dirs[0] / RESUMABLE if start else None, weights_only=True)
    except NonFiniteLoss as error:
        member = module.failed
        steps = [s for s in saved_steps(member.run_dir) if s <= error.step]
        good = f"its last good checkpoint is {series_path(member.run_dir, steps[-1])}" if steps else "no checkpoint was saved"
        message = (f"{error} ({config.experiment}); the ensemble stopped, {good}. "
                   "Lower the learning rate, or train the seed alone with on_nonfinite=skip")
        write_meta(member.run_dir, member.config, failed=message)
        raise NonFiniteLoss(error.step, message) from None
    finally:
        torch.set_float32_matmul_precision(precision)
    wall = time.time() - started
    for member, meta in zip(members, metas):
        write_meta(member.run_dir, member.config, finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   wall_seconds=round(meta.get("wall_seconds", 0.0) + wall, 2))


class Member:
    """One seed: its config, run directory, logs, measures, and a bridge to materialise it into."""

    def __init__(self, config: Config, run_dir: Path, start_step: int, dataset=None):
        self.config, self.run_dir = config, run_dir
        self.model = build_model(config.model, config.task, seed=config.model_seed)  # its initial weights
        self.metrics = DeviceMetrics()  # its measures; the per-step metrics are stacked (EnsembleModule)
        # As a single run: a resumed run writes the rows from its first step again.
        self.table = MetricsTable(run_dir / "metrics.csv")
        self.table.truncate_after(start_step - 1)
        self.tb = TensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False,
                                    purge_step=start_step or None)
        self.loggers = [self.tb, self.table]
        self.measures = measure_callbacks(config, run_dir, dataset)
        self.series_steps = frozenset(checkpoint_steps(config.checkpoints, config.max_steps))

    def as_single_module(self) -> torch.nn.Module:
        """The bridge under the name a single run's module holds it (its state_dict keys)."""
        return torch.nn.ModuleDict({"model": self.model})

    def native_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.original_model.named_parameters())
