"""Runs progress measures during training: a thin Lightning callback around a pure measure.

It evaluates at the checkpoint-series steps (step 0 included) or every N steps, in eval mode
without gradients on the model's device, restores the model's mode, and hands the values to the
module's device-side metrics, so they are logged with the exact step and no extra host sync.
"""
from __future__ import annotations

from typing import Callable, Iterable

import lightning as L


class MeasureCallback(L.Callback):
    def __init__(self, measure: Callable, steps: Iterable[int] | None = None, every: int | None = None):
        self.measure, self.steps, self.every = measure, frozenset(steps or ()), every

    def due(self, step: int) -> bool:
        return step % self.every == 0 if self.every else step in self.steps

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step == 0 or self.due(trainer.global_step):  # step 0, or a resumed step
            self.evaluate(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.due(trainer.global_step) or trainer.global_step == trainer.max_steps:
            self.evaluate(pl_module)

    def evaluate(self, pl_module) -> None:
        model = pl_module.model
        was_training = model.training
        model.eval()
        values = self.measure(model)
        model.train(was_training)
        pl_module.step_metrics.add(pl_module.global_step, values)
