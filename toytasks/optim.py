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
