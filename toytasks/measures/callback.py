"""Runs progress measures during training: a thin Lightning callback around a pure measure.

It evaluates at the checkpoint-series steps (step 0 included) or every N steps, in eval mode
without gradients on the model's device, restores the model's mode, and hands the values to the
module's device-side metrics, so they are logged with the exact step and no extra host sync.
The schedule (`due_at_start`, `due_after`), the evaluation (`values`) and the end-of-run summary
(`finish`) are plain methods, so the ensemble trainer (toytasks/ensemble/) drives the same
callbacks for each of its seeds without Lightning calling them.
"""
from __future__ import annotations

from typing import Callable, Iterable

import lightning as L


class MeasureCallback(L.Callback):
    def __init__(self, measure: Callable, steps: Iterable[int] | None = None, every: int | None = None):
        self.measure, self.steps, self.every = measure, frozenset(steps or ()), every

    def due(self, step: int) -> bool:
        return step % self.every == 0 if self.every else step in self.steps

    def due_at_start(self, step: int) -> bool:
        return step == 0 or self.due(step)  # step 0, or the step a resumed run restarts from

    def due_after(self, step: int, max_steps: int) -> bool:
        return self.due(step) or step == max_steps

    def values(self, model) -> dict:
        was_training = model.training
        model.eval()
        values = self.measure(model)
        model.train(was_training)
        return values

    def finish(self, model, loggers) -> None:
        """When training ends, after the metrics are saved: summaries over the whole run."""

    def on_train_start(self, trainer, pl_module) -> None:
        if self.due_at_start(trainer.global_step):
            self.evaluate(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.due_after(trainer.global_step, trainer.max_steps):
            self.evaluate(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.flush_metrics(save=True)
        if trainer.is_global_zero:  # with several devices, one process writes the summaries
            self.finish(pl_module.model, trainer.loggers)

    def evaluate(self, pl_module) -> None:
        pl_module.step_metrics.add(pl_module.global_step, self.values(pl_module.model))
