"""One LightningModule for every task: the research step, nothing else.

The loss is the mean cross-entropy over scored targets (targets of -100 are not scored), with the
log-softmax in float64 as in the grokking seed. Step numbers count optimizer updates: every
metric in the row of step s is a function of the weights after s updates, the same weights the
checkpoint series saves as step s. (The seed logs its test loss after the update, as here.)
"""
from __future__ import annotations

import math
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F

from .config import Config, OptimConfig
from .data import Batch, TrainBatches
from .errors import NonFiniteLoss
from .metrics import DeviceMetrics
from .model import build_model, trainable_parameters
from .tasks import IGNORE


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean float64 cross-entropy and accuracy over the targets that are not -100."""
    logits = logits.flatten(0, -2).to(torch.float64)  # [batch * pos, d_vocab_out]
    targets = targets.flatten()  # [batch * pos]
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    scored = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & scored
    return loss, correct.sum() / scored.sum()


def lr_factor(step: int, warmup: int, schedule: str, max_steps: int) -> float:
    """The learning rate at `step` as a fraction of the peak: linear warmup, then constant or cosine."""
    if step < warmup:
        return step / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


class ToyTaskModule(L.LightningModule):
    def __init__(self, config: Config, eval_split: Optional[Batch] = None,
                 train_split: Optional[Batch] = None):
        super().__init__()
        self.config, self.task = config, config.task
        self.model = build_model(config.model, config.task, seed=config.model_seed)
        # Splits of a finite task, moved to the device with the module (see on_fit_start).
        self.train_split, self.eval_split = train_split, eval_split
        self.batches: Optional[TrainBatches] = None
        self.step_metrics = DeviceMetrics()
        self.latest: dict[str, float] = {}  # the newest logged row, for the progress bar
        self._resume_batches: Optional[dict] = None
        self.first_nonfinite: Optional[torch.Tensor] = None  # device scalar: first bad step, or -1
        self.skipped_steps = self.skips_in_a_row = 0
        self._weights: Optional[list[torch.Tensor]] = None  # for the weight norm

    def forward(self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # The bridge's native module holds the same parameters without the hook wrappers: the
        # hot path skips their Python overhead, while measures and notebooks use the hooks.
        return self.model.original_model(tokens, attention_mask=attention_mask)  # [batch, pos, d_vocab_out]

    def score(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["tokens"], batch.get("attention_mask"))
        positions = self.task.scored_positions
        return loss_and_accuracy(logits[:, positions], batch["targets"][:, positions])

    # --- data -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        move = lambda split: None if split is None else {k: v.to(self.device) for k, v in split.items()}
        self.train_split, self.eval_split = move(self.train_split), move(self.eval_split)

    def train_dataloader(self) -> TrainBatches:
        if self.batches is None:
            # Each DDP process draws its own batches; process 0 draws what a one-device run would.
            self.batches = TrainBatches(self.task, self.config.max_steps, self.config.batch_size,
                                        seed=self.config.seed + (self.global_rank << 32), device=self.device,
                                        train_split=self.train_split)
            if self._resume_batches is not None:
                self.batches.load_state_dict(self._resume_batches)
        return self.batches

    # --- the step ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Optional[torch.Tensor]:
        loss, accuracy = self.score(batch)
        self.step_metrics.add(self.global_step, {"train/loss": loss, "train/acc": accuracy})
        if self.config.on_nonfinite == "skip":
            return self.skip_if_nonfinite(loss)
        # Remember the first non-finite step on the device; checked before anything is saved.
        if self.first_nonfinite is None:
            self.first_nonfinite = torch.tensor(-1, device=self.device)
        bad = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(bad, self.global_step, self.first_nonfinite)
        return loss

    def skip_if_nonfinite(self, loss: torch.Tensor) -> Optional[torch.Tensor]:
        if torch.isfinite(loss):  # a host sync per step: the price of the opt-in `skip`
            self.skips_in_a_row = 0
            return loss
        self.skipped_steps += 1
        self.skips_in_a_row += 1
        if self.skips_in_a_row >= 100:
            raise NonFiniteLoss(self.global_step, "100 non-finite losses in a row, even when skipping")
        return None  # Lightning skips the backward pass and the optimizer step

    def raise_if_nonfinite(self) -> None:
        """Called before any checkpoint or metrics are written (a host sync, but only then)."""
        if self.first_nonfinite is not None and (step := int(self.first_nonfinite)) >= 0:
            raise NonFiniteLoss(step)

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

    @torch.no_grad()
    def evaluate(self) -> None:
        """Test loss and accuracy, the learning rate and the weight norm, at the current step."""
        # One fused kernel for all parameters (as clip_grad_norm_ does), not a Python loop of them.
        if self._weights is None:  # collected once, after the move to the device
            self._weights = [p.detach() for p in self.model.parameters()]
        norms = torch._foreach_norm(self._weights)
        values = {"weights/sq_norm": torch.stack(norms).pow(2).sum()}
        if self.trainer.optimizers:
            values["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        if self.config.on_nonfinite == "skip":
            values["train/skipped_steps"] = self.skipped_steps
        if self.eval_split is not None:
            # No mode switch: these models have no dropout or batch norm, and toggling the
            # bridge's many modules costs milliseconds at every step.
            values["val/loss"], values["val/acc"] = self.score(self.eval_split)
        self.step_metrics.add(self.global_step, values)

    def flush_metrics(self, save: bool = False) -> None:
        """Copy pending metrics to the host once and hand them to every logger. `save` also
        rewrites the metrics table on disk (done with each resumable checkpoint and at the end,
        not at every flush: rewriting a long table every few steps would cost more than training)."""
        self.raise_if_nonfinite()
        rows = self.step_metrics.drain()
        for step, row in rows.items():
            for logger in self.loggers:
                logger.log_metrics(row, step=step)
        if save:
            for logger in self.loggers:
                logger.save()
        for row in rows.values():
            self.latest.update(row)

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        return optimizer_and_schedule(trainable_parameters(self.model), self.config.optim, self.config.max_steps)

    # --- resumable state --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.flush_metrics(save=True)  # the table on disk always matches the resumable checkpoint
        if self.batches is not None:
            checkpoint["toytasks_batches"] = self.batches.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_batches = checkpoint.get("toytasks_batches")


def optimizer_and_schedule(parameters, o: OptimConfig, max_steps: int) -> dict:
    """AdamW with its learning-rate schedule (lr_factor), stepped every optimizer step (Lightning's
    return format)."""
    optimizer = torch.optim.AdamW(parameters, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, o.schedule, max_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
