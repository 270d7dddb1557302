"""Resumable checkpoints, one `last.ckpt` per run, each written atomically.

Lightning builds one checkpoint for the module; this plugin writes each run's part of it into
that run's directory in the one-run format (its weights under the single run's keys, its slice
of the optimizer state, its data generator), and stacks the runs' files back into one checkpoint
when resuming. So a killed ensemble or grid resumes together, and any of its runs also resumes
alone (`toytasks train RUN_DIR/config.yaml --resume`). A grid's optimizer (RunsAdamW) keeps run
0's learning rate and weight decay in its param group, so the stacked checkpoint is run 0's.

Runs trained together must resume from one step, so their files are replaced as one: each run's
new file is written whole as `last.ckpt.next`, and only when all are written are they renamed to
`last.ckpt`. A process killed in between leaves them for `settle_resumable` to finish (every
run's new file was written) or undo (not all were).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.fabric.plugins import CheckpointIO

from ..files import describe, write_atomically
from ..errors import ToytasksError
from ..layout import RunPaths
from ..optim import RunsAdamW
from ..storage import resumable_step


class RunsCheckpointIO(CheckpointIO):
    def __init__(self, module):
        self.module = module

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        runs, members, optimizer = self.module.runs, self.module.members, self.module.trainer.optimizers[0]
        staged = len(members) > 1
        for i, member in enumerate(members):
            part = runs.run_checkpoint(checkpoint, i)
            if isinstance(optimizer, RunsAdamW):  # run i's learning rate and weight decay, as its single run has them
                states = optimizer.one_run_state(part["optimizer_states"][0], part["lr_schedulers"][0], i)
                part = {**part, "optimizer_states": [states[0]], "lr_schedulers": [states[1]]}
            target = member.paths.staged_resumable if staged else member.paths.resumable
            write_atomically(target, lambda tmp: _save(part, tmp))
        if staged:
            for member in members:
                _replace(member.paths.staged_resumable, member.paths.resumable)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # Only tensors and plain containers: a run directory's checkpoint never runs code.
        parts = [torch.load(m.paths.resumable, map_location="cpu", weights_only=True) for m in self.module.members]
        return self.module.runs.stack_checkpoints(parts)

    def remove_checkpoint(self, path) -> None:
        pass  # each run's last.ckpt is replaced in place


def settle_resumable(run_dirs: list[Path]) -> None:
    """Finish or undo an ensemble's replacement of its last.ckpt files that a crash interrupted:
    finish it when every seed has its new file (staged or already renamed), else undo it. Call it
    holding the runs' locks, before reading their last.ckpt."""
    paths = [RunPaths(run_dir) for run_dir in run_dirs]
    staged = [p for p in paths if p.staged_resumable.exists()]
    if not staged:
        return
    step = resumable_step(staged[0].staged_resumable)
    complete = all(p.staged_resumable.exists() or (p.resumable.exists() and resumable_step(p.resumable) == step)
                   for p in paths)
    for p in staged:
        if complete:
            _replace(p.staged_resumable, p.resumable)
        else:
            p.staged_resumable.unlink()


def _save(part: dict, tmp: Path) -> None:
    with open(tmp, "wb") as f:  # through a Python file: a full disk is an OSError, not torch's RuntimeError
        torch.save(_interned(part), f)


def _interned(obj):
    """`obj` with every string interned. Pickle writes a string once per object, so a resumed run
    (whose optimizer state has the strings unpickled from its checkpoint) would write the same
    checkpoint in other bytes than an uninterrupted one; with one object per string they agree."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        copy = obj.copy()  # the same mapping type
        copy.clear()
        copy.update((_interned(k), _interned(v)) for k, v in obj.items())
        return copy
    if isinstance(obj, list):
        return [_interned(v) for v in obj]
    if type(obj) is tuple:
        return tuple(_interned(v) for v in obj)
    return obj


def _replace(source: Path, target: Path) -> None:
    try:
        os.replace(source, target)
    except OSError as error:
        raise ToytasksError(f"{target}: cannot write ({describe(error)})") from None
