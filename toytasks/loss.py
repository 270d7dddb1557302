"""The training loss, for every task: mean cross-entropy over the scored targets.

Targets of -100 are not scored. The log-softmax is taken in float64, as in the grokking seed
(its `loss_fn`): in float32 the loss of a memorised training set rounds to zero long before it
is zero, and grokking stalls.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .tasks import IGNORE


def loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean float64 cross-entropy and accuracy over the targets that are not -100.

    logits [..., d_vocab_out], targets [...] -> two 0-d tensors.
    """
    logits = logits.flatten(0, -2).to(torch.float64)  # [batch * pos, d_vocab_out]
    targets = targets.flatten()  # [batch * pos]
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE)
    scored = targets != IGNORE
    correct = (logits.argmax(-1) == targets) & scored
    return loss, correct.sum() / scored.sum()
