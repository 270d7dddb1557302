"""What a run records while it trains, as Lightning callbacks, each for every run trained together:
the checkpoint series, the resumable checkpoint, the progress measures, and the progress bar.

Lightning calls them in this order at each step, before the module's own `on_train_batch_end`
(the test loss, then the metrics hand-over), and nothing is written past a non-finite loss.
"""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from .. import interrupts
from ..interrupts import Interrupted, signal_name
from ..model import build_model
from ..storage import load_weights, save_weights, write_json


class SeriesCallback(L.Callback):
    """Saves each run's weights at the scheduled steps, step 0 (or the resumed step) included."""

    def on_train_start(self, trainer, module) -> None:
        self.on_train_batch_end(trainer, module, None, None, 0)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in module.series_steps:
            module.raise_if_nonfinite()
            module.runs.materialise()
            if trainer.is_global_zero:
                for member in module.members:
                    save_weights(member.model, member.paths.series(step), step)


class ResumableCheckpoint(L.Callback):
    """Weights, optimizer, schedule and data-generator state (one file per run: checkpoint_io.py)
    every `resume_every` steps, and at the end of the step in which a Ctrl-C or SIGTERM arrives,
    which then stops the run. The last one is written after the last step, once every other file
    of the run is (training/__init__.py): a last.ckpt at max_steps means the run is complete."""

    def on_train_start(self, trainer, module) -> None:
        if trainer.world_size == 1:  # with DDP a signal stops every process at once (no checkpoint)
            interrupts.defer()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step, config = trainer.global_step, module.config
        signum = interrupts.pending()
        if step == config.max_steps:  # what follows, the end of the run, may stop anywhere
            interrupts.stop_deferring()
            if signum is not None:
                raise Interrupted(signum, f"interrupted by {signal_name(signum)} at the last step ({step}), "
                                          "before the run's end was written")
        elif step % config.checkpoints.resume_every == 0 or signum is not None:
            module.raise_if_nonfinite()
            trainer.save_checkpoint(module.members[0].paths.resumable)  # every DDP process takes part
            if signum is not None:
                raise Interrupted(signum, f"interrupted by {signal_name(signum)} at step {step}, "
                                          "where a resumable checkpoint was saved")


class MeasuresCallback(L.Callback):
    """Each run's progress measures at their steps (step 0 included), in eval mode without gradients
    on the training device, their values kept on the device with the exact step; when training
    ends, the values that need the whole series and each measure's summary file."""

    def on_train_start(self, trainer, module) -> None:
        step = trainer.global_step  # 0, or the step a resumed run restarts from
        self.evaluate(module, lambda measure: step == 0 or measure.due(step, module.series_steps))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self.evaluate(module, lambda measure: step == trainer.max_steps or measure.due(step, module.series_steps))

    def evaluate(self, module, due) -> None:
        todo = [[measure for measure in member.measures if due(measure)] for member in module.members]
        if not any(todo):
            return
        module.raise_if_nonfinite()
        module.runs.materialise()
        for member, measures in zip(module.members, todo):
            for measure in measures:
                member.metrics.add(module.global_step, in_eval_mode(member.model, measure))

    def on_train_end(self, trainer, module) -> None:
        module.flush_metrics(save=True)
        if not trainer.is_global_zero or not any(member.measures for member in module.members):
            return  # with several devices, one process writes the summaries
        module.runs.materialise()
        for member in module.members:
            finish_measures(member)


def finish_measures(member) -> None:
    """After training: what the measures compute over the saved series, then their summaries."""
    paths, config = member.paths, member.config
    device = member.model.W_E.device
    scratch = None

    def model_at(step: int):
        nonlocal scratch
        if scratch is None:  # built once, only when a measure asks for a saved step
            scratch = build_model(config.model, config.task, config.model_seed, device=device).eval()
        scratch.load_state_dict(load_weights(paths.series(step), device))
        return scratch

    steps = paths.saved_steps()
    for measure in member.measures:
        rows = in_eval_mode(member.model, lambda model: measure.after_training(model_at, steps, model))
        for step, row in rows.items():
            for logger in member.loggers:
                logger.log_metrics(row, step=step)
    for logger in member.loggers:
        logger.save()
    metrics = member.table.frame()
    for measure in member.measures:
        if measure.summary_file:
            write_json(paths.summary(measure.summary_file), measure.summary(measure.options, metrics))


def in_eval_mode(model, fn):
    """fn(model) with the model in eval mode, its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return fn(model)
    finally:
        model.train(was_training)


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, showing the newest metrics the module copied out (never forcing a sync)."""

    def on_train_epoch_start(self, trainer, module):
        super().on_train_epoch_start(trainer, module)
        self.train_progress_bar.set_description(f"{module.config.experiment}")

    def get_metrics(self, trainer, module):
        shown = ("train/loss", "val/loss", "val/acc")
        return {k: f"{v:.3g}" for k, v in module.latest.items() if k in shown}
