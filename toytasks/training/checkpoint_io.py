"""Resumable checkpoints, one `last.ckpt` per run, each written atomically.

Lightning builds one checkpoint for the module; this plugin writes each run's part of it into
that run's directory in the one-run format (its weights under the single run's keys, its slice
of the optimizer state, its data generator), and stacks the runs' files back into one checkpoint
when resuming. So a killed ensemble resumes together, and any of its seeds also resumes alone
(`toytasks train RUN_DIR/config.yaml --resume`).
"""
from __future__ import annotations

import torch
from lightning.fabric.plugins import CheckpointIO

from ..files import write_atomically


class RunsCheckpointIO(CheckpointIO):
    def __init__(self, module):
        self.module = module

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        runs = self.module.runs
        for i, member in enumerate(self.module.members):
            part = runs.run_checkpoint(checkpoint, i)
            write_atomically(member.paths.resumable, lambda tmp: torch.save(part, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # Only tensors and plain containers: a run directory's checkpoint never runs code.
        parts = [torch.load(m.paths.resumable, map_location="cpu", weights_only=True) for m in self.module.members]
        return self.module.runs.stack_checkpoints(parts)

    def remove_checkpoint(self, path) -> None:
        pass  # each run's last.ckpt is replaced in place
