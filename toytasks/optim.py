"""The optimiser: AdamW with a learning-rate schedule, and gradient clipping per run.

Written for one run or for an ensemble of runs whose parameters are stacked along a first
dimension (toytasks/training/replicas.py): AdamW is elementwise, so one optimizer steps them all
as independent runs, and clipping scales each run's gradient by that run's own norm.
"""
from __future__ import annotations

import math

import torch

from .config import OptimConfig


def lr_factor(step: int, warmup: int, schedule: str, max_steps: int) -> float:
    """The learning rate at `step` as a fraction of the peak: linear warmup, then constant or cosine."""
    if step < warmup:
        return step / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def optimizer_and_schedule(parameters, o: OptimConfig, max_steps: int) -> dict:
    """AdamW with its learning-rate schedule (lr_factor), stepped every optimizer step (Lightning's
    return format)."""
    optimizer = torch.optim.AdamW(parameters, lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, o.schedule, max_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def clip_scales(grads_per_run: list[list[torch.Tensor]], max_norm: float) -> torch.Tensor:
    """[runs]: the factor by which to scale each run's gradient so that its norm is at most
    `max_norm`, computed with `torch.nn.utils.clip_grad_norm_`'s own reductions run by run, so
    each factor is bit for bit what that run alone would get (a batched norm adds up in another
    order, and Adam amplifies the difference)."""
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                         for grads in grads_per_run])
    return (max_norm / (norms + 1e-6)).clamp(max=1.0)


class RunsAdamW(torch.optim.Optimizer):
    """AdamW for runs stacked along a first dimension, each with its own learning rate and weight
    decay: a hyperparameter grid trained as one run (toytasks/training/replicas.py), and the
    optimizer of a captured step (toytasks/training/captured.py).

    torch's AdamW takes one learning rate per parameter group, and a stacked parameter holds every
    run. This one does torch's AdamW arithmetic (the non-capturable single-tensor and foreach paths
    of torch/optim/adam.py, with decoupled weight decay) with a value per run where torch has a
    scalar: run i's slice gets exactly the update its single run gets. The per-step scalars that
    torch computes in Python doubles (1 - lr wd, -lr / (1 - beta1^t), sqrt(1 - beta2^t)) are
    computed here the same way, for every step at once when the optimizer is built, and kept on
    the device as float32 (`table`, one row per update): a step reads its row there, so it needs
    no host-to-device copy, and a recorded CUDA graph can index the row on the device.

    Its param group and state have torch AdamW's keys (as run 0's single run would save them), so
    a run's resumable checkpoint stays in the one-run format (`one_run_state`). The learning rate
    in the param group is run 0's, stepped by the usual LambdaLR for the `lr` metric and the
    checkpoint; the arithmetic reads the table, which lr_factor (that schedule's function) filled.
    """

    def __init__(self, params, lrs: list[float], weight_decays: list[float], betas: tuple[float, float],
                 factors: list[float], stacked: bool = True, eps: float = 1e-8):
        params = list(params)
        template = torch.optim.AdamW([torch.zeros(0)], lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decays[0])
        super().__init__(params, dict(template.defaults))
        if not stacked and len(lrs) != 1:
            raise ValueError("parameters that are not stacked belong to one run")
        self.lrs, self.weight_decays, self.factors = list(lrs), list(weight_decays), list(factors)
        self.stacked = stacked
        self.updates = 0  # optimizer steps taken: the table's row for the next one
        self.recorded_update = None  # set by a captured step: replays `update` as a CUDA graph
        device = params[0].device
        self.table = self.step_table(betas).to(device)  # [update, 3, runs] float32
        for p in params:  # allocated up front (torch's AdamW does it at the first step), so that a
            self.state[p] = {"step": torch.tensor(0.0),  # captured step finds them in place
                             "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}

    def step_table(self, betas: tuple[float, float]) -> torch.Tensor:
        """[update k, (1 - lr wd, -lr / (1 - beta1^t), sqrt(1 - beta2^t)), run] for t = k + 1, in the
        doubles torch's AdamW computes in Python (lr = peak * lr_factor(k), as LambdaLR sets it),
        then rounded to float32 as torch rounds a Python scalar for a float32 kernel. The powers
        are Python's (torch's float64 pow may differ in the last bit); the rest are IEEE products,
        differences and quotients, the same in a float64 tensor as in Python."""
        beta1, beta2 = betas
        steps = range(1, len(self.factors))  # t of each update
        bias_correction1 = torch.tensor([1 - beta1 ** float(t) for t in steps], dtype=torch.float64)[:, None]
        bc2_sqrt = torch.tensor([(1 - beta2 ** float(t)) ** 0.5 for t in steps], dtype=torch.float64)[:, None]
        lr = torch.tensor(self.factors[:-1], dtype=torch.float64)[:, None] * torch.tensor(self.lrs, dtype=torch.float64)
        decay = 1 - lr * torch.tensor(self.weight_decays, dtype=torch.float64)
        neg_step_size = -(lr / bias_correction1)
        return torch.stack([decay, neg_step_size, bc2_sqrt.expand_as(lr)], dim=1).to(torch.float32)

    def learning_rates(self, schedule_step: int) -> list[float]:
        """Each run's learning rate after `schedule_step` scheduler steps (what LambdaLR gives it)."""
        return [lr * self.factors[schedule_step] for lr in self.lrs]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.updates >= len(self.table):
            raise RuntimeError(f"RunsAdamW was built for {len(self.table)} steps")
        if self.recorded_update is not None:
            self.recorded_update()
        else:
            self.update(self.table[self.updates])
        self.updates += 1
        torch._foreach_add_([s["step"] for s in self.state.values()], 1.0)
        return loss

    def update(self, row: torch.Tensor) -> None:
        """One AdamW update with the per-run scalars of `row` [3, runs] (a row of `table`)."""
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        decay, neg_step_size, bias_correction2_sqrt = row
        for p in group["params"]:
            if p.grad is None:
                raise RuntimeError("RunsAdamW steps every parameter at every step, and one has no gradient")
            state = self.state[p]
            per_run = (-1,) + (1,) * (p.dim() - 1) if self.stacked else (1,) * p.dim()
            exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
            p.mul_(decay.view(per_run))
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt.view(per_run)).add_(group["eps"])
            # torch: p.addcdiv_(exp_avg, denom, value=-step_size), i.e. p + (value * exp_avg) / denom
            p.addcdiv_(exp_avg * neg_step_size.view(per_run), denom)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        steps = {int(s["step"]) for s in self.state.values()}
        if len(steps) != 1:
            raise RuntimeError(f"the parameters were stepped different numbers of times: {sorted(steps)}")
        self.updates = steps.pop()

    def one_run_state(self, optimizer_state: dict, scheduler_state: dict, i: int) -> tuple[dict, dict]:
        """Run i's optimizer and schedule state as its single run (torch's AdamW and LambdaLR) saves
        them, from this optimizer's (whose per-parameter tensors are already run i's slices)."""
        epoch = scheduler_state["last_epoch"]
        lr, now = self.lrs[i], self.lrs[i] * self.factors[epoch]
        groups = [{**g, "lr": now, "initial_lr": lr, "weight_decay": self.weight_decays[i]}
                  for g in optimizer_state["param_groups"]]
        return ({**optimizer_state, "param_groups": groups},
                {**scheduler_state, "base_lrs": [lr], "_last_lr": [now]})


def schedule_factors(o: OptimConfig, max_steps: int) -> list[float]:
    """lr_factor at steps 0..max_steps: what LambdaLR multiplies the peak learning rate by."""
    return [lr_factor(step, o.warmup_steps, o.schedule, max_steps) for step in range(max_steps + 1)]


def runs_optimizer_and_schedule(parameters, configs: list[OptimConfig], max_steps: int, stacked: bool = True) -> dict:
    """RunsAdamW for runs whose optimizers differ only in lr and weight decay, with run 0's
    LambdaLR (the same schedule factors for every run), in Lightning's format."""
    o = configs[0]
    optimizer = RunsAdamW(parameters, [c.lr for c in configs], [c.weight_decay for c in configs], o.betas,
                          schedule_factors(o, max_steps), stacked=stacked)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, o.warmup_steps, o.schedule, max_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
