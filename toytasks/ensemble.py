"""Seed ensembles: the seeds of one config trained at once, in one process, on one device.

A config with `seeds: [0, 1, 2]` trains its seeds together. Their parameters are stacked along a
new first dimension; one forward pass runs every seed with `torch.func.vmap` over
`functional_call` of the bridge's native module; one AdamW steps the stacked tensors. AdamW is
elementwise and the loss is the sum of the seeds' losses, so each seed gets its own gradient and
its own update: N independent runs, computed together. What would couple the seeds is kept per
seed: gradient clipping (each seed's own norm), the data (each seed draws from its own generator
exactly what its single run draws; a full batch is shared), a sampled task's held-out batch,
and the non-finite-loss check. Frozen parameters are stacked but never given to the optimizer.

Each seed writes an ordinary run directory, the one its single run would write: config.yaml
with `seed: s` (so the same run_id), the series at the same steps, metrics.csv, tb/, the
measures (each seed's model is copied into its own TransformerBridge at the checkpoint steps),
phases.json / heads.json, and meta.json (with an `ensemble` field). Its `last.ckpt` is in the
single-run format too: `EnsembleCheckpointIO` splits the ensemble's Lightning checkpoint per
seed when saving and stacks the seeds' files when loading. So a killed ensemble resumes with
`--resume` (its unfinished seeds must have stopped at the same step, as they do unless the kill
fell between two seeds' writes), and any seed also resumes alone with
`toytasks train RUN_DIR/config.yaml --resume`.

Results equal single runs to float tolerance, not bit for bit: batched matmuls add up in another
order. Not supported: `on_nonfinite: skip` (one optimizer step updates every seed; a non-finite
loss in any seed stops the ensemble) and more than one device.
"""
from __future__ import annotations

import copy
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.loggers import TensorBoardLogger
from torch.func import functional_call, vmap

from .config import Config
from .data import Batch, TrainBatches
from .errors import NonFiniteLoss, ToytasksError
from .files import write_atomically
from .metrics import DeviceMetrics, MetricsTable
from .model import build_model, trainable_parameters
from .module import optimizer_and_schedule
from .rundir import RunLock, load_or_make_dataset, prepare_run_dir, read_meta, write_meta
from .series import RESUMABLE, checkpoint_steps, save_weights, saved_steps, series_path
from .tasks import IGNORE, batch_from_split
from .tasks.base import BATCH_KEYS
from .train import (StepProgressBar, check_batch_size, held_out_batch, measure_callbacks, quiet_lightning,
                    resumable_step)


def train_ensemble(config: Config, resume: bool = False, overwrite: bool = False, progress: bool = True,
                   callbacks: Sequence[L.Callback] = ()) -> list[Path]:
    """Train every seed of `config.seeds` at once; returns their run directories.

    The flags mean what they mean for one run, seed by seed; with `resume`, seeds that finished
    earlier are left as they are and the others continue together.
    """
    if config.seeds is None:
        raise ToytasksError("an ensemble needs `seeds`: a list of seeds to train at once")
    check_batch_size(config)
    todo = [m for m in config.members
            if overwrite or not (resume and read_meta(m.run_dir).get("finished"))]
    if todo:
        run_dirs = [prepare_run_dir(m, resume=resume, overwrite=overwrite) for m in todo]
        with ExitStack() as stack:
            for run_dir in run_dirs:
                stack.enter_context(RunLock(run_dir))
            stack.enter_context(quiet_lightning())
            _train(todo, run_dirs, resume, progress, callbacks)
    return [m.run_dir for m in config.members]


def _train(configs: list[Config], run_dirs: list[Path], resume: bool, progress: bool, callbacks) -> None:
    starts = {run_dir: resumable_step(run_dir / RESUMABLE) if resume and (run_dir / RESUMABLE).exists() else 0
              for run_dir in run_dirs}
    if len(set(starts.values())) > 1:
        steps = ", ".join(f"{d}: {s}" for d, s in starts.items())
        raise ToytasksError(f"the seeds stopped at different steps ({steps}); resume each alone with "
                            "`toytasks train RUN_DIR/config.yaml --resume`, or pass --overwrite")
    start = starts[run_dirs[0]]
    datasets = [load_or_make_dataset(c, d) for c, d in zip(configs, run_dirs)]  # one copy per run directory
    members = [Member(c, d, start) for c, d in zip(configs, run_dirs)]
    module = EnsembleModule(members, datasets[0])
    config = configs[0]
    trainer = L.Trainer(
        max_steps=config.max_steps, max_epochs=-1, accelerator=config.trainer.accelerator, devices=1,
        logger=False, plugins=[EnsembleCheckpointIO(module)],
        callbacks=[*callbacks] + ([StepProgressBar(refresh_rate=max(1, config.log_every // 10))] if progress else []),
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    seeds = [c.seed for c in configs]
    metas = [write_meta(m.run_dir, m.config, device=str(trainer.strategy.root_device), finished=False,
                        ensemble=seeds) for m in members]
    started, precision = time.time(), torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(config.matmul_precision)
    try:
        trainer.fit(module, ckpt_path=run_dirs[0] / RESUMABLE if start else None, weights_only=True)
    except NonFiniteLoss as error:
        member = module.failed
        steps = [s for s in saved_steps(member.run_dir) if s <= error.step]
        good = f"its last good checkpoint is {series_path(member.run_dir, steps[-1])}" if steps else "no checkpoint was saved"
        message = (f"{error} ({config.experiment}); the ensemble stopped, {good}. "
                   "Lower the learning rate, or train the seed alone with on_nonfinite=skip")
        write_meta(member.run_dir, member.config, failed=message)
        raise NonFiniteLoss(error.step, message) from None
    finally:
        torch.set_float32_matmul_precision(precision)
    wall = time.time() - started
    for member, meta in zip(members, metas):
        write_meta(member.run_dir, member.config, finished=True, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   wall_seconds=round(meta.get("wall_seconds", 0.0) + wall, 2))


class Member:
    """One seed: its config, run directory, logs, measures, and a bridge to materialise it into."""

    def __init__(self, config: Config, run_dir: Path, start_step: int):
        self.config, self.run_dir = config, run_dir
        self.model = build_model(config.model, config.task, seed=config.model_seed)  # its initial weights
        self.metrics = DeviceMetrics()  # its measures; the per-step metrics are stacked (EnsembleModule)
        # As a single run: a resumed run writes the rows from its first step again.
        self.table = MetricsTable(run_dir / "metrics.csv")
        self.table.truncate_after(start_step - 1)
        self.tb = TensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False,
                                    purge_step=start_step or None)
        self.loggers = [self.tb, self.table]
        self.measures = measure_callbacks(config, run_dir)
        self.series_steps = frozenset(checkpoint_steps(config.checkpoints, config.max_steps))

    def as_single_module(self) -> torch.nn.Module:
        """The bridge under the name a single run's module holds it (its state_dict keys)."""
        return torch.nn.ModuleDict({"model": self.model})

    def native_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.original_model.named_parameters())


class EnsembleModule(L.LightningModule):
    def __init__(self, members: list[Member], dataset=None):
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
        self.failed: Optional[Member] = None

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
            return functional_call(template, (params, self.buffers), (tokens,), kwargs, tie_weights=False)

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
        self.buffers = dict(self.members[0].model.original_model.named_buffers())  # the same for every seed
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
        return optimizer_and_schedule([self.stacked[j] for j in self.trained], self.config.optim)

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


class EnsembleCheckpointIO(CheckpointIO):
    """Saves the ensemble's Lightning checkpoint as one single-run `last.ckpt` per seed, and loads
    those back as one stacked checkpoint. Per seed: its weights (through its bridge, under the
    single run's keys), its slice of the optimizer state, its data generator; the loop and
    schedule state is the same for all."""

    def __init__(self, module: EnsembleModule):
        self.module = module

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        self.module.materialise()
        for i, member in enumerate(self.module.members):
            part = self.split(checkpoint, i)
            write_atomically(member.run_dir / RESUMABLE, lambda tmp: torch.save(part, tmp))

    def split(self, checkpoint: dict, i: int) -> dict:
        member = self.module.members[i]
        part = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states", "loops")}
        part["state_dict"] = member.as_single_module().state_dict()
        part["optimizer_states"] = [_map_state(s, lambda t: t[i]) for s in checkpoint["optimizer_states"]]
        if "toytasks_batches" in checkpoint:
            part["toytasks_batches"] = checkpoint["toytasks_batches"]["streams"][i]
        part["loops"] = _with_loader_state(checkpoint["loops"], lambda state: state["streams"][i])
        return part

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        module = self.module
        parts = [torch.load(m.run_dir / RESUMABLE, map_location="cpu", weights_only=True) for m in module.members]
        for member, part in zip(module.members, parts):
            member.as_single_module().load_state_dict(part["state_dict"])
        stacked = {f"stacked.{j}": torch.stack([list(m.native_parameters().values())[j].detach() for m in module.members])
                   for j in range(len(module.names))}
        checkpoint = {k: v for k, v in parts[0].items() if k not in ("state_dict", "optimizer_states", "loops")}
        checkpoint["state_dict"] = stacked
        checkpoint["optimizer_states"] = [
            _stack_states([p["optimizer_states"][k] for p in parts]) for k in range(len(parts[0]["optimizer_states"]))]
        if "toytasks_batches" in parts[0]:
            checkpoint["toytasks_batches"] = {"streams": [p["toytasks_batches"] for p in parts]}
        loaders = [_loader_state(p["loops"]) for p in parts]
        checkpoint["loops"] = _with_loader_state(parts[0]["loops"], lambda _: {"streams": loaders})
        return checkpoint

    def remove_checkpoint(self, path) -> None:
        pass  # each seed's last.ckpt is replaced in place


def _map_state(state: dict, per_seed) -> dict:
    """An optimizer state dict with `per_seed` applied to every per-parameter tensor (not `step`)."""
    return {"state": {k: {n: per_seed(v) if torch.is_tensor(v) and v.dim() > 0 else v for n, v in s.items()}
                      for k, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def _stack_states(states: list[dict]) -> dict:
    first = states[0]
    return {"state": {k: {n: torch.stack([s["state"][k][n] for s in states]) if torch.is_tensor(v) and v.dim() > 0 else v
                          for n, v in first["state"][k].items()} for k in first["state"]},
            "param_groups": first["param_groups"]}


def _loader_state(loops: dict):
    """The data iterable's state inside Lightning's loop state (saved there too since it has one)."""
    return loops.get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [None])[0]


def _with_loader_state(loops: dict, convert) -> dict:
    loops = copy.deepcopy(loops)
    state = loops.get("fit_loop", {}).get("state_dict", {})
    if state.get("combined_loader"):
        state["combined_loader"] = [convert(state["combined_loader"][0])]
    return loops
