"""A fixed weight norm (Omnigrok, Liu et al. 2023, "Omnigrok: grokking beyond algorithmic data"):
after every optimizer step, rescale the weights so that their total norm is what it was at
initialisation, as their modular-addition notebook does (`param.data *= norm / new_norm` over all
parameters, with no weight decay). Together with `model.init_scale` this sets the weight norm the
model trains at: Omnigrok's claim is that a small one removes the delay of grokking.

Toytasks rescales the trained parameters only: frozen ones (the grokking configs' zero biases)
stay as they are, where Omnigrok's models have none. Each run of an ensemble keeps its own norm.
"""
from __future__ import annotations

from typing import Callable

import torch


class FixedWeightNorm:
    def __init__(self, params: list[torch.Tensor], per_run: Callable[[torch.Tensor], torch.Tensor]):
        self.target = squared_norm(params, per_run)  # [runs], of the initial weights

    @torch.no_grad()
    def __call__(self, params: list[torch.Tensor], per_run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Rescale the parameters in place to the initial norm."""
        self.target = self.target.to(params[0].device)
        factor = (self.target / squared_norm(params, per_run)).sqrt()  # [runs], float64
        for param in params:
            view = per_run(param.detach())
            view.mul_(factor.to(view.dtype)[:, None])


@torch.no_grad()
def squared_norm(params: list[torch.Tensor], per_run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """[runs]: each run's sum of squared parameters, accumulated in float64."""
    return sum(per_run(param.detach()).double().pow(2).sum(-1) for param in params)
