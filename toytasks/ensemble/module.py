"""The ensemble's LightningModule: stacked parameters, one vmapped forward pass for every seed,
per-seed losses, clipping and metrics, and the single run's per-step order of work."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from ..data import Batch, TrainBatches
from ..errors import NonFiniteLoss
from ..metrics import DeviceMetrics
from ..model import trainable_parameters
from ..module import optimizer_and_schedule
from ..series import RESUMABLE, save_weights, series_path
from ..tasks import IGNORE, batch_from_split
from ..tasks.base import BATCH_KEYS
from ..train import held_out_batch

if TYPE_CHECKING:
    from . import Member


class EnsembleModule(L.LightningModule):
    def __init__(self, members: list["Member"], dataset=None):
        super().__init__()
        self.members = members  # a plain list: their bridges are copies for measures and saving
        self.config, self.task = members[0].config, members[0].config.task
        params = [m.native_parameters() for m in members]
        self.names = list(params[0])
        self.stacked = torch.nn.ParameterList([
            torch.nn.Parameter(torch.stack([p[name].detach() for p in params]), requires_grad=params[0][name].requires_grad)
            for name in self.names])  # each [seed, ...]
        # The trained parameters, in the order a single run's optimizer holds them.
        index = {id(p): j for j, p in enumerate(params[0].values())}
        self.trained = [index[id(p)] for p in trainable_parameters(members[0].model)]
        # A full batch is the same for every seed: pass it once, unbatched.
        self.shared_data = self.task.finite and self.config.batch_size is None
        self.train_split = None if dataset is None else batch_from_split(dataset["train"])
        if dataset is not None:
            self.eval_split, self.eval_shared = batch_from_split(dataset["test"]), True
        else:  # a sampled task's held-out batch depends on the seed
            held_out = [held_out_batch(m.config) for m in members]
            self.eval_split = {k: torch.stack([b[k] for b in held_out]) for k in BATCH_KEYS if k in held_out[0]}
            self.eval_shared = False
        self.batches: Optional[EnsembleBatches] = None
        self._resume_batches: Optional[dict] = None
        self.step_metrics = DeviceMetrics()  # values with one entry per seed
        self.latest: dict[str, float] = {}  # the newest row, averaged over seeds, for the progress bar
        self.first_nonfinite: Optional[torch.Tensor] = None  # [seed]: first bad step, or -1
        self.failed: Optional["Member"] = None

    # --- the batched forward pass ---------------------------------------------------------
    def forward(self, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                shared: bool = False) -> torch.Tensor:
        """tokens [seed, batch, pos] (or [batch, pos] if shared) -> logits [seed, batch, pos, d_vocab_out]."""
        template = self.members[0].model.original_model
        params = dict(zip(self.names, self.stacked))

        def one_seed(params, tokens, attention_mask):
            kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
            # tie_weights=False: the bridge reaches some modules by two paths, and swapping a
            # parameter in twice would leave the batched tensor behind when it is swapped back.
            return functional_call(template, (params, self.native_buffers), (tokens,), kwargs, tie_weights=False)

        data = None if shared else 0
        return vmap(one_seed, in_dims=(0, data, None if attention_mask is None else data))(params, tokens, attention_mask)

    def score(self, batch: Batch, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Each seed's mean float64 cross-entropy and accuracy over the scored targets: [seed] each."""
        positions = self.task.scored_positions
        logits = self(batch["tokens"], batch.get("attention_mask"), shared=shared)[:, :, positions].to(torch.float64)
        targets = batch["targets"][..., positions].expand(logits.shape[:-1])  # [seed, batch, pos]
        losses = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="none")
        scored = targets != IGNORE
        count = scored.flatten(1).sum(1)
        correct = (logits.argmax(-1) == targets) & scored
        return (losses.view_as(targets) * scored).flatten(1).sum(1) / count, correct.flatten(1).sum(1) / count

    # --- data and device --------------------------------------------------------------------
    def on_fit_start(self) -> None:
        move = lambda split: None if split is None else {k: v.to(self.device) for k, v in split.items()}
        self.train_split, self.eval_split = move(self.train_split), move(self.eval_split)
        for member in self.members:
            member.model.to(self.device, print_details=False)
        self.native_buffers = dict(self.members[0].model.original_model.named_buffers())  # the same for every seed
        self.first_nonfinite = torch.full((len(self.members),), -1, device=self.device)

    def train_dataloader(self) -> "EnsembleBatches":
        if self.batches is None:
            c = self.config
            streams = [TrainBatches(self.task, c.max_steps, c.batch_size, seed=m.config.seed, device=self.device,
                                    train_split=self.train_split) for m in self.members]
            self.batches = EnsembleBatches(streams, c.max_steps, self.train_split if self.shared_data else None)
            if self._resume_batches is not None:
                self.batches.load_state_dict(self._resume_batches)
        return self.batches

    # --- the step ---------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, accuracy = self.score(batch, shared=self.shared_data)
        self.step_metrics.add(self.global_step, {"train/loss": loss, "train/acc": accuracy})
        bad = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(bad, self.global_step, self.first_nonfinite)
        return loss.sum()  # the gradient of seed i's parameters is that of its own loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip each seed's gradient by its own norm (what clip_grad_norm_ does in a single run)."""
        clip = self.config.optim.grad_clip
        if clip is None:
            return
        grads = [self.stacked[j].grad for j in self.trained]
        # clip_grad_norm_'s own reductions, seed by seed, so that each norm is bit for bit its
        # single run's (a batched reduction adds up in another order, and Adam amplifies that).
        norms = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g[i] for g in grads])))
                             for i in range(len(self.members))])  # [seed]
        scale = (clip / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))

    def raise_if_nonfinite(self) -> None:
        if self.first_nonfinite is None:
            return
        bad = [(step, i) for i, step in enumerate(self.first_nonfinite.tolist()) if step >= 0]
        if bad:
            step, i = min(bad)
            self.failed = self.members[i]
            raise NonFiniteLoss(step, f"non-finite training loss at step {step} in seed {self.failed.config.seed}")

    def on_train_start(self) -> None:
        # What a single run's callbacks and module do at its first step (0, or the resumed one).
        step = self.global_step
        self.materialise()
        for member in self.members:
            if step in member.series_steps:
                save_weights(member.model, series_path(member.run_dir, step), step)
            for callback in member.measures:
                if callback.due_at_start(step):
                    member.metrics.add(step, callback.values(member.model))
        self.evaluate()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The single run's order: series, resumable checkpoint, measures, then metrics.
        step, c = self.global_step, self.config
        due = [[cb for cb in m.measures if cb.due_after(step, c.max_steps)] for m in self.members]
        series = step in self.members[0].series_steps
        if series or any(due):
            self.raise_if_nonfinite()
            self.materialise()
        if series:
            for member in self.members:
                save_weights(member.model, series_path(member.run_dir, step), step)
        if step % c.checkpoints.resume_every == 0 or step == c.max_steps:
            self.raise_if_nonfinite()
            self.trainer.save_checkpoint(self.members[0].run_dir / RESUMABLE)  # one file per seed
        for member, callbacks in zip(self.members, due):
            for callback in callbacks:
                member.metrics.add(step, callback.values(member.model))
        if step % c.eval_every == 0 or step == c.max_steps:
            self.evaluate()
        if step % c.log_every == 0 or step == c.max_steps:
            self.flush_metrics()

    def on_train_end(self) -> None:
        self.flush_metrics(save=True)
        self.materialise()
        for member in self.members:
            for callback in member.measures:
                callback.finish(member.model, member.loggers)
            for logger in member.loggers:
                logger.finalize("success")

    @torch.no_grad()
    def materialise(self) -> None:
        """Copy each seed's slice of the stacked parameters into its own bridge."""
        for i, member in enumerate(self.members):
            for param, stacked in zip(member.native_parameters().values(), self.stacked):
                param.copy_(stacked[i])

    @torch.no_grad()
    def evaluate(self) -> None:
        """Each seed's test loss and accuracy, weight norm and learning rate at this step."""
        norms = torch.stack([p.flatten(1).norm(dim=1) for p in self.stacked])  # [param, seed]
        values = {"weights/sq_norm": norms.pow(2).sum(0)}
        if self.trainer.optimizers:
            values["lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
        values["val/loss"], values["val/acc"] = self.score(self.eval_split, shared=self.eval_shared)
        self.step_metrics.add(self.global_step, values)

    def flush_metrics(self, save: bool = False) -> None:
        """Copy the pending metrics to the host and hand each seed's rows to its loggers."""
        self.raise_if_nonfinite()
        stacked = self.step_metrics.drain()  # {step: {name: [one value per seed] or a shared float}}
        for i, member in enumerate(self.members):
            rows = member.metrics.drain()
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

    def configure_optimizers(self):
        return optimizer_and_schedule([self.stacked[j] for j in self.trained], self.config.optim, self.config.max_steps)

    # --- resumable state: split per seed by EnsembleCheckpointIO ----------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.flush_metrics(save=True)  # every seed's table on disk matches its last.ckpt
        if self.batches is not None:
            checkpoint["toytasks_batches"] = self.batches.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_batches = checkpoint.get("toytasks_batches")


class EnsembleBatches:
    """Every seed's training batches, stacked [seed, batch, pos]; a full batch is shared instead."""

    def __init__(self, streams: list[TrainBatches], n_steps: int, shared: Optional[Batch] = None):
        self.streams, self.n_steps, self.shared = streams, n_steps, shared

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self):
        while True:
            if self.shared is not None:
                yield self.shared
                continue
            batches = [stream.next_batch() for stream in self.streams]
            yield {k: torch.stack([b[k] for b in batches]) for k in BATCH_KEYS if k in batches[0]}

    def state_dict(self) -> dict:
        return {"streams": [stream.state_dict() for stream in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        for stream, part in zip(self.streams, state["streams"]):
            stream.load_state_dict(part)
