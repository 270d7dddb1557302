"""⊥Grad (Prieto et al. 2025, "Grokking at the edge of numerical stability"): before each
optimizer step, remove from each parameter's gradient its component along the parameter, then
rescale what is left to the gradient's own norm, as their `OrthoGrad._orthogonalize_gradients`
(github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability) does, tensor by tensor:

    g_orth = g - (w . g) / (w . w + 1e-30) * w        g <- g_orth * |g| / (|g_orth| + 1e-30)

Without the radial component, the steps cannot simply scale up the logits of examples already
fitted (naive loss minimisation), which is what drives softmax collapse. Each run of an ensemble
is projected against its own weights.
"""
from __future__ import annotations

from typing import Callable

import torch


@torch.no_grad()
def orthogonalise(params: list[torch.Tensor], per_run: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Project each parameter's gradient in place. `per_run(t)` views t as [runs, n] (one row per run)."""
    for param in params:
        if param.grad is None:
            continue
        w, g = per_run(param.detach()), per_run(param.grad)  # [runs, n]
        proj = (w * g).sum(-1, keepdim=True) / ((w * w).sum(-1, keepdim=True) + 1e-30)
        g_orth = g - proj * w
        g_orth *= g.norm(dim=-1, keepdim=True) / (g_orth.norm(dim=-1, keepdim=True) + 1e-30)
        g.copy_(g_orth)
