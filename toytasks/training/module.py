"""The one LightningModule, for every task and for one run or several trained together: the
research step, the per-step evaluation, and the hand-over of metrics to each run's loggers.

Step numbers count optimizer updates: every metric in the row of step s is a function of the
weights after s updates, the same weights the checkpoint series saves as step s. (The grokking
seed logs its test loss after the update, as here.) Metrics stay on the device and are copied out
every `log_every` steps, so no step waits for the host.

The order of work at each step: the callbacks (callbacks.py: series, resumable checkpoint,
measures), then this module's `on_train_batch_end` (test loss, then the metrics hand-over).

With `trainer.capture` (on by default on a GPU) the step and the evaluation are recorded once as
CUDA graphs and replayed (captured.py); this module's eager step stays the reference.
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch

from ..data import Batch, RunBatches, TrainBatches, held_out_batch, stream_seed
from ..errors import NonFiniteLoss
from ..groups import optimizers_differ
from ..interventions import Interventions
from ..optim import RunsAdamW, clip_scales, optimizer_and_schedule, runs_optimizer_and_schedule
from ..tasks import batch_from_split
from ..tasks.base import BATCH_KEYS
from . import replicas
from .captured import CapturedStep, use_capture
from .device_metrics import DeviceMetrics
from .members import Member


class ToyTaskModule(L.LightningModule):
    def __init__(self, members: list[Member], dataset=None):
        super().__init__()
        self.members = members
        self.config, self.task = members[0].config, members[0].config.task
        self.runs = replicas.of(members)
        self.interventions = Interventions(self.config.optim, self.runs)  # Grokfast, ⊥Grad, fixed norm
        self.series_steps = members[0].series_steps
        # The splits of a finite task, moved to the device with the module (see on_fit_start); a
        # full batch is the same for every run: passed once, unbatched.
        self.train_split = None if dataset is None else batch_from_split(dataset["train"])
        self.shared_data = self.task.finite and self.config.batch_size is None
        if dataset is not None:
            self.eval_split, self.eval_shared = batch_from_split(dataset["test"]), True
        else:  # a sampled task's held-out batch depends on the run's seed
            held_out = [held_out_batch(self.task, m.config.seed) for m in members]
            self.eval_shared = len(members) == 1
            self.eval_split = held_out[0] if self.eval_shared else \
                {k: torch.stack([b[k] for b in held_out]) for k in BATCH_KEYS if k in held_out[0]}
        self.batches: Optional[RunBatches] = None
        self._resume_batches: Optional[dict] = None
        self.step_metrics = DeviceMetrics()  # [runs] values, or plain floats shared by the runs
        self.latest: dict[str, float] = {}  # the newest row, averaged over runs, for the progress bar
        self.first_nonfinite: Optional[torch.Tensor] = None  # [runs]: first bad step, or -1
        self.skipped_steps = self.skips_in_a_row = 0
        self._capture: Optional[bool] = None  # decided once the device is known (capturing())
        self.captured: Optional[CapturedStep] = None

    # --- data and device --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        move = lambda split: None if split is None else {k: v.to(self.device) for k, v in split.items()}
        self.train_split, self.eval_split = move(self.train_split), move(self.eval_split)
        self.runs.on_device(self.device)
        self.first_nonfinite = torch.full((len(self.members),), -1, device=self.device)
        self.captured = CapturedStep(self) if self.capturing() else None

    def capturing(self) -> bool:
        """Is the step captured (trainer.capture: auto, on or off, and the device)?"""
        if self._capture is None:
            self._capture = use_capture(self.config, self.device)
        return self._capture

    def train_dataloader(self) -> RunBatches:
        if self.batches is None:
            c = self.config
            # Each DDP process draws its own batches; process 0 draws what a one-device run would.
            streams = [TrainBatches(self.task, c.max_steps, c.batch_size, seed=stream_seed(m.config.seed, self.global_rank),
                                    device=self.device, train_split=self.train_split) for m in self.members]
            self.batches = RunBatches(streams, c.max_steps, self.train_split if self.shared_data else None)
            if self._resume_batches is not None:
                self.batches.load_state_dict(self._resume_batches)
        return self.batches

    # --- the step ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Optional[torch.Tensor]:
        if self.captured is not None:  # forward and backward replayed; the update follows
            self.captured.train_step(batch, self.global_step)  # in the optimizer's step
            return None
        loss, accuracy = self.runs.score(batch, shared=self.shared_data)  # [runs] each
        self.step_metrics.add(self.global_step, {"train/loss": loss, "train/acc": accuracy})
        if self.config.on_nonfinite == "skip":  # one run only (the config refuses it for ensembles)
            return self.skip_if_nonfinite(loss)
        self.note_nonfinite(loss, self.global_step)
        return loss.sum()  # run i's parameters get the gradient of its own loss

    def note_nonfinite(self, loss: torch.Tensor, step) -> None:
        """Remember each run's first non-finite step on the device (in place, for a captured step
        too); checked before anything is saved."""
        bad = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite.copy_(torch.where(bad, step, self.first_nonfinite))

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer) -> None:
        if self.captured is None:  # a captured step's backward writes its gradients in place
            optimizer.zero_grad()

    def skip_if_nonfinite(self, loss: torch.Tensor) -> Optional[torch.Tensor]:
        if torch.isfinite(loss).all():  # a host sync per step: the price of the opt-in `skip`
            self.skips_in_a_row = 0
            return loss.sum()
        self.skipped_steps += 1
        self.skips_in_a_row += 1
        if self.skips_in_a_row >= 100:
            raise NonFiniteLoss(self.global_step, "100 non-finite losses in a row, even when skipping")
        return None  # Lightning skips the backward pass and the optimizer step

    def on_before_optimizer_step(self, optimizer) -> None:
        """The gradient interventions, then clip each run's gradient by its own norm (what
        clip_grad_norm_ does for one run); eagerly for a captured step too, between its two graphs
        (see captured.py)."""
        self.interventions.on_gradients(self.runs)
        clip = self.config.optim.grad_clip
        if clip is None:
            return
        grads = [self.runs.run_grads(i) for i in range(len(self.members))]
        if all(grads):  # none after a skipped step
            self.runs.scale_grads(clip_scales(grads, clip))

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        optimizer.step(closure=optimizer_closure)  # Lightning's own, then what must follow it at once
        self.interventions.after_step(self.runs)

    def raise_if_nonfinite(self) -> None:
        """Called before any checkpoint or metrics are written (a host sync, but only then)."""
        if self.first_nonfinite is None:
            return
        bad = [(step, i) for i, step in enumerate(self.first_nonfinite.tolist()) if step >= 0]
        if bad:
            step, i = min(bad)
            which = f" in seed {self.members[i].config.seed}" if len(self.members) > 1 else ""
            raise NonFiniteLoss(step, f"non-finite training loss at step {step}{which}", run=i)

    def on_train_start(self) -> None:
        # The row of the first step: step 0, or the step a resumed run restarts from (its row was
        # dropped because the killed run may have written only part of it).
        self.evaluate()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.global_step  # updates applied so far
        if step % self.config.eval_every == 0 or step == self.config.max_steps:
            self.evaluate()
        if step % self.config.log_every == 0 or step == self.config.max_steps:
            self.flush_metrics()

    def on_train_end(self) -> None:
        self.flush_metrics(save=True)
        for member in self.members:
            for logger in member.loggers:
                logger.finalize("success")

    @torch.no_grad()
    def evaluate(self) -> None:
        """Test loss and accuracy, the learning rate and the weight norm, at the current step."""
        values = {}
        if self.trainer.optimizers:
            values["lr"] = self.learning_rates()
        if self.config.on_nonfinite == "skip":
            values["train/skipped_steps"] = self.skipped_steps
        if self.captured is not None:
            self.captured.evaluate(self.global_step)
        else:
            values.update(self.evaluation())
        self.step_metrics.add(self.global_step, values)

    def evaluation(self) -> dict[str, torch.Tensor]:
        """The evaluation's device values, [runs] each."""
        # One fused kernel for all of a run's parameters (as clip_grad_norm_ does), not a loop.
        norms = [torch.stack(torch._foreach_norm(self.runs.run_weights(i))).pow(2).sum()
                 for i in range(len(self.members))]
        # No mode switch: these models have no dropout or batch norm, and toggling the bridge's
        # many modules costs milliseconds at every step.
        loss, accuracy = self.runs.score(self.eval_split, shared=self.eval_shared)
        return {"weights/sq_norm": torch.stack(norms), "val/loss": loss, "val/acc": accuracy}

    def flush_metrics(self, save: bool = False) -> None:
        """Copy pending metrics to the host once and hand each run's rows to its loggers. `save`
        also rewrites the metrics tables on disk (done with each resumable checkpoint and at the
        end, not at every flush: rewriting a long table every few steps costs more than training)."""
        self.raise_if_nonfinite()
        stacked = self.step_metrics.drain()  # {step: {name: [one value per run] or a shared float}}
        if self.captured is not None:
            for step, row in self.captured.drain().items():
                stacked.setdefault(step, {}).update(row)
            stacked = dict(sorted(stacked.items()))
        for i, member in enumerate(self.members):
            rows = member.metrics.drain()  # its measures
            for step, row in stacked.items():
                rows.setdefault(step, {}).update({k: v[i] if isinstance(v, list) else v for k, v in row.items()})
            for step in sorted(rows):
                for logger in member.loggers:
                    logger.log_metrics(rows[step], step=step)
            if save:
                for logger in member.loggers:
                    logger.save()
        for row in stacked.values():
            self.latest.update({k: sum(v) / len(v) if isinstance(v, list) else v for k, v in row.items()})

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        configs = [m.config for m in self.members]
        if optimizers_differ(configs) or self.capturing():  # a grid (one lr and weight decay per run),
            # or a captured step (whose update reads each step's values on the device)
            return runs_optimizer_and_schedule(self.runs.trainable(), [c.optim for c in configs], self.config.max_steps,
                                               stacked=len(self.members) > 1)
        # Single runs and seed ensembles keep torch's AdamW (their metrics stay byte for byte).
        return optimizer_and_schedule(self.runs.trainable(), self.config.optim, self.config.max_steps)

    def learning_rates(self) -> float | list[float]:
        """The learning rate now: one for all the runs, or one per run of a grid."""
        optimizer = self.trainer.optimizers[0]
        if isinstance(optimizer, RunsAdamW):
            return optimizer.learning_rates(self.trainer.lr_scheduler_configs[0].scheduler.last_epoch)
        return optimizer.param_groups[0]["lr"]

    # --- resumable state (split into one file per run by checkpoint_io.py) ------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.flush_metrics(save=True)  # the tables on disk always match the resumable checkpoint
        if self.batches is not None:
            checkpoint["toytasks_batches"] = self.batches.state_dict()
        state = self.interventions.state_dict()
        if state:  # only with an intervention that keeps state: other runs' checkpoints are as before
            checkpoint[replicas.PER_RUN_STATE] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_batches = checkpoint.get("toytasks_batches")
        self.interventions.load_state_dict(checkpoint.get(replicas.PER_RUN_STATE, {}))
