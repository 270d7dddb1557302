"""The checkpoint series (weights at scheduled steps) and the single resumable checkpoint.

Series files are safetensors (`series/step_000100.safetensors`): loading one never runs code.
Every file is written under a temporary name and renamed into place, so a crash never leaves a
truncated file under a final name.
"""
from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

from .config import CheckpointConfig
from .files import write_atomically

SERIES_DIR = "series"
_STEP_FILE = re.compile(r"step_(\d+)\.safetensors")
RESUMABLE = "last.ckpt"


def checkpoint_steps(cfg: CheckpointConfig, max_steps: int) -> list[int]:
    """The sorted steps of the series: 0, every `every`, the log-spaced ones, the extras, the last."""
    steps = set(range(0, max_steps + 1, cfg.every)) | {0, max_steps} | set(cfg.steps)
    if cfg.log_spaced:
        power = 1
        while power < min(cfg.every, max_steps):
            steps.add(power)
            power *= 2
    return sorted(steps)


def series_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / SERIES_DIR / f"step_{step:06d}.safetensors"


def saved_steps(run_dir: str | Path) -> list[int]:
    """Steps with a complete series file (a crashed write leaves only a hidden .tmp file)."""
    files = (Path(run_dir) / SERIES_DIR).glob("step_*.safetensors")
    return sorted(int(m.group(1)) for f in files if (m := _STEP_FILE.fullmatch(f.name)))


def save_weights(model: torch.nn.Module, path: Path, step: int) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_atomically(path, lambda tmp: save_file(state, str(tmp), metadata={"step": str(step)}))


class CheckpointSeries(L.Callback):
    """Saves `pl_module.model`'s weights at the scheduled steps, step 0 included."""

    def __init__(self, run_dir: str | Path, steps: list[int]):
        self.run_dir, self.steps = Path(run_dir), frozenset(steps)

    def on_train_start(self, trainer, pl_module) -> None:
        self.on_train_batch_end(trainer, pl_module, None, None, 0)  # step 0, or the resumed step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.steps:
            pl_module.raise_if_nonfinite()
            if trainer.is_global_zero:
                save_weights(pl_module.model, series_path(self.run_dir, step), step)


class ResumableCheckpoint(L.Callback):
    """Weights, optimizer, schedule and data-generator state every `every` steps and at the end."""

    def __init__(self, run_dir: str | Path, every: int, max_steps: int):
        self.path, self.every, self.max_steps = Path(run_dir) / RESUMABLE, every, max_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == self.max_steps:
            pl_module.raise_if_nonfinite()
            if trainer.is_global_zero:
                write_atomically(self.path, trainer.save_checkpoint)
            else:  # every DDP process takes part in saving; only process 0 writes the file
                trainer.save_checkpoint(self.path)
