"""One LightningModule for every task: the research step, nothing else.

The loss is the mean cross-entropy over scored targets (targets of -100 are not scored), with the
log-softmax in float64 as in the grokking seed. Step numbers count optimizer updates: every
metric in the row of step s is a function of the weights after s updates, the same weights the
checkpoint series saves as step s. (The seed logs its test loss after the update, as here.)
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F

from .config import Config
from .data import Batch, TrainBatches
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

    def forward(self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model(tokens, attention_mask=attention_mask)  # [batch, pos, d_vocab_out]

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
            self.batches = TrainBatches(self.task, self.config.max_steps, self.config.batch_size,
                                        seed=self.config.seed, device=self.device,
                                        train_split=self.train_split)
            if self._resume_batches is not None:
                self.batches.load_state_dict(self._resume_batches)
        return self.batches

    # --- the step ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, accuracy = self.score(batch)
        self.step_metrics.add(self.global_step, {"train/loss": loss, "train/acc": accuracy})
        return loss

    def on_train_start(self) -> None:
        if self.global_step == 0:
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
        values = {"weights/sq_norm": sum((p.detach() ** 2).sum() for p in self.model.parameters())}
        if self.trainer.optimizers:
            values["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        if self.eval_split is not None:
            was_training = self.model.training
            self.model.eval()
            values["val/loss"], values["val/acc"] = self.score(self.eval_split)
            self.model.train(was_training)
        self.step_metrics.add(self.global_step, values)

    def flush_metrics(self) -> None:
        """Copy pending metrics to the host once and hand them to every logger."""
        rows = self.step_metrics.drain()
        for step, row in rows.items():
            for logger in self.loggers:
                logger.log_metrics(row, step=step)
        for logger in self.loggers:
            logger.save()
        for row in rows.values():
            self.latest.update(row)

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.config.optim
        optimizer = torch.optim.AdamW(trainable_parameters(self.model), lr=o.lr,
                                      weight_decay=o.weight_decay, betas=o.betas)
        warmup = o.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(step / warmup, 1.0) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # --- resumable state --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.flush_metrics()  # the table on disk always matches the resumable checkpoint
        if self.batches is not None:
            checkpoint["toytasks_batches"] = self.batches.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_batches = checkpoint.get("toytasks_batches")
