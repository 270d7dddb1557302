"""Resumable checkpoints, one `last.ckpt` per run, each written atomically.

Lightning builds one checkpoint for the module; this plugin writes each run's part of it into
that run's directory in the one-run format (its weights under the single run's keys, its slice
of the optimizer state, its data generator), and stacks the runs' files back into one checkpoint
when resuming. So a killed ensemble or grid resumes together, and any of its runs also resumes
alone (`toytasks train RUN_DIR/config.yaml --resume`). A grid's optimizer (RunsAdamW) keeps run
0's learning rate and weight decay in its param group, so the stacked checkpoint is run 0's.
"""
from __future__ import annotations

import torch
from lightning.fabric.plugins import CheckpointIO

from ..files import write_atomically
from ..optim import RunsAdamW


class RunsCheckpointIO(CheckpointIO):
    def __init__(self, module):
        self.module = module

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        runs, optimizer = self.module.runs, self.module.trainer.optimizers[0]
        for i, member in enumerate(self.module.members):
            part = runs.run_checkpoint(checkpoint, i)
            if isinstance(optimizer, RunsAdamW):  # run i's learning rate and weight decay, as its single run has them
                states = optimizer.one_run_state(part["optimizer_states"][0], part["lr_schedulers"][0], i)
                part = {**part, "optimizer_states": [states[0]], "lr_schedulers": [states[1]]}
            write_atomically(member.paths.resumable, lambda tmp: torch.save(part, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # Only tensors and plain containers: a run directory's checkpoint never runs code.
        parts = [torch.load(m.paths.resumable, map_location="cpu", weights_only=True) for m in self.module.members]
        return self.module.runs.stack_checkpoints(parts)

    def remove_checkpoint(self, path) -> None:
        pass  # each run's last.ckpt is replaced in place
