"""Train one config into its run directory: the only place that assembles a Lightning Trainer."""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from .config import Config
from .errors import ConfigError, ToytasksError
from .metrics import MetricsTable
from .module import ToyTaskModule
from .series import RESUMABLE, CheckpointSeries, ResumableCheckpoint, checkpoint_steps
from .tasks import batch_from_split

DATA_DIR = "data"
META = "meta.json"


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the newest metrics the module copied out (never forcing a sync)."""

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"{pl_module.config.experiment}")

    def get_metrics(self, trainer, pl_module):
        shown = ("train/loss", "val/loss", "val/acc")
        return {k: f"{v:.3g}" for k, v in pl_module.latest.items() if k in shown}


def train(config: Config, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Path:
    """Train `config` and return its run directory."""
    run_dir = config.run_dir
    prepare_run_dir(config, run_dir, resume=resume, overwrite=overwrite)
    dataset = load_or_make_dataset(config, run_dir)
    if dataset is not None and config.batch_size is not None and config.batch_size > len(dataset["train"]):
        raise ConfigError("batch_size", f"{config.batch_size} is more than the "
                                        f"{len(dataset['train'])} training examples")
    module = ToyTaskModule(
        config,
        train_split=None if dataset is None else batch_from_split(dataset["train"]),
        eval_split=None if dataset is None else batch_from_split(dataset["test"]),
    )
    resume_from = run_dir / RESUMABLE if resume and (run_dir / RESUMABLE).exists() else None
    start_step = 0
    if resume_from is not None:
        start_step = torch.load(resume_from, map_location="cpu", weights_only=True)["global_step"]
    table = MetricsTable(run_dir / "metrics.csv")
    table.truncate_after(start_step)  # rows a killed run wrote after its last resumable checkpoint
    with quiet_lightning():
        trainer = L.Trainer(
            max_steps=config.max_steps, max_epochs=-1, accelerator="auto", devices=1,
            logger=[TensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False,
                                      purge_step=start_step or None), table],
            callbacks=[CheckpointSeries(run_dir, checkpoint_steps(config.checkpoints, config.max_steps)),
                       ResumableCheckpoint(run_dir, config.checkpoints.resume_every, config.max_steps),
                       *measure_callbacks(config, run_dir)]
            + ([StepProgressBar(refresh_rate=max(1, config.log_every // 10))] if progress else []),
            gradient_clip_val=config.optim.grad_clip, enable_checkpointing=False,
            enable_model_summary=False, enable_progress_bar=progress, num_sanity_val_steps=0,
            limit_val_batches=0, log_every_n_steps=config.log_every,
        )
        meta = write_meta(run_dir, config, str(trainer.strategy.root_device), finished=False)
        started = time.time()
        trainer.fit(module, ckpt_path=resume_from)
    write_meta(run_dir, config, meta["device"], finished=True,
               wall_seconds=round(meta.get("wall_seconds", 0.0) + time.time() - started, 2))
    return run_dir


def measure_callbacks(config: Config, run_dir: Path) -> list[L.Callback]:
    """The progress measures the config switches on, evaluated on the training device."""
    callbacks = []
    fourier = config.measures.fourier
    if fourier is not None:
        from .measures.fourier import FourierMeasures
        from .measures.grokking import FourierCallback

        callbacks.append(FourierCallback(FourierMeasures(config.task, fourier), run_dir,
                                         steps=checkpoint_steps(config.checkpoints, config.max_steps),
                                         every=fourier.every))
    return callbacks


def prepare_run_dir(config: Config, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Create the run directory, refusing to silently overwrite an earlier run in it."""
    meta_path = run_dir / META
    if meta_path.exists() and overwrite:
        import shutil
        shutil.rmtree(run_dir)
    elif meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("finished"):
            raise ToytasksError(f"{run_dir} already holds a finished run; "
                                "pass --overwrite to train it again")
        if not resume:
            raise ToytasksError(f"{run_dir} holds an unfinished run; "
                                "pass --resume to continue it or --overwrite to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())


def load_or_make_dataset(config: Config, run_dir: Path):
    """The finite task's DatasetDict, stored once in the run directory; None for sampled tasks."""
    if not config.task.finite:
        return None
    from datasets import load_from_disk

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # a bar per shard for a few kB of data is noise
    path = run_dir / DATA_DIR
    if not path.exists():
        tmp = path.with_name(DATA_DIR + ".tmp")
        config.task.make_dataset().save_to_disk(str(tmp))
        tmp.rename(path)
    return load_from_disk(str(path))


def write_meta(run_dir: Path, config: Config, device: str, finished: bool, **extra) -> dict:
    from importlib.metadata import version

    from . import __version__

    meta_path = run_dir / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update(
        versions={"toytasks": __version__, "torch": torch.__version__, "lightning": version("lightning"),
                  "transformer_lens": version("transformer-lens"), "python": platform.python_version()},
        device=device, git_sha=_git_sha(), run_id=config.run_id, experiment=config.experiment,
        finished=finished, **extra,
    )
    meta.setdefault("started", time.strftime("%Y-%m-%dT%H:%M:%S"))
    if finished:
        meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
