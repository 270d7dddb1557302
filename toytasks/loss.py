"""The training loss, for every task: mean cross-entropy over the scored targets.

Targets of -100 are not scored. By default the log-softmax is taken in float64, as in the grokking
seed (its `loss_fn`): in float32 the loss of a memorised training set rounds to zero long before it
is zero, and grokking stalls. The config's `loss` and `loss_dtype` choose StableMax instead of the
softmax, and float32 instead of float64 (Prieto et al. 2025, "Grokking at the edge of numerical
stability"; their `stablemax_cross_entropy` and `cross_entropy_float32`).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from .tasks import IGNORE

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor, loss: str = "softmax",
                      dtype: str = "float64") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (of the softmax or the StableMax, in `dtype`) and accuracy over the
    targets that are not -100.

    logits [..., d_vocab_out], targets [...] -> two 0-d tensors.
    """
    logits = logits.flatten(0, -2).to(DTYPES[dtype])  # [batch * pos, d_vocab_out]
    targets = targets.flatten()  # [batch * pos]
    if loss == "softmax":
        value = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    else:
        value = F.nll_loss(log_stablemax(logits), targets, ignore_index=IGNORE)
    scored = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & scored  # s is increasing: the same argmax either way
    return value, correct.sum() / scored.sum()


def loss_function(loss: str = "softmax", dtype: str = "float64") -> Callable:
    """`loss_and_accuracy` with the config's `loss` and `loss_dtype` filled in."""
    return functools.partial(loss_and_accuracy, loss=loss, dtype=dtype)


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x) below: positive, increasing, and linear rather than
    exponential for large x, so no probability rounds to exactly 1 long before its logit is large.
    The 1e-30 is Prieto et al.'s; it cannot change 1 - x >= 1, in float32 or float64."""
    return torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)


def log_stablemax(logits: torch.Tensor) -> torch.Tensor:
    """log(s(x_i) / sum_j s(x_j)) along the last dimension, in the logits' dtype, computed as
    Prieto et al.'s `log_stablemax` does (the log of the ratio)."""
    s = stablemax_s(logits)
    return torch.log(s / s.sum(-1, keepdim=True))
