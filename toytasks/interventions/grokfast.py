"""Grokfast (Lee et al. 2024, "Grokfast: accelerated grokking by amplifying slow gradients"):
before each optimizer step, every gradient g becomes g + lamb * (a low-pass filter of the
gradients so far), as the authors' `gradfilter_ema` and `gradfilter_ma` (github.com/ironjr/grokfast)
compute it:

    ema:  h <- alpha * h + (1 - alpha) * g   (h starts at the first gradient)    g <- g + lamb * h
    ma:   g <- g + lamb * mean(last `window` raw gradients, g included), once `window` have been
          seen (their `warmup=True`); before that g is left as it is

Elementwise, so it filters stacked parameters ([run, ...], an ensemble) run by run unchanged.
The filter's memory is part of the resumable checkpoint: a resumed run filters as if never stopped.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..config import GrokfastConfig


class Grokfast:
    def __init__(self, cfg: GrokfastConfig):
        self.cfg = cfg
        self.ema: Optional[list[torch.Tensor]] = None  # ema: one tensor per trained parameter
        self.window: Optional[list[torch.Tensor]] = None  # ma: [window, *parameter shape] each, a ring
        self.seen = 0  # ma: gradients written into the ring so far

    @torch.no_grad()
    def __call__(self, grads: list[torch.Tensor]) -> None:
        """Filter the gradients in place."""
        if self.cfg.filter == "ema":
            self._ema(grads)
        else:
            self._moving_average(grads)

    def _ema(self, grads: list[torch.Tensor]) -> None:
        alpha, lamb = self.cfg.alpha, self.cfg.lamb
        if self.ema is None:
            self.ema = [g.clone() for g in grads]
        else:
            self.ema = [h.to(g.device) for h, g in zip(self.ema, grads)]  # after a resume
        # The reference's arithmetic, operation for operation: h * alpha + g * (1 - alpha), then g + h * lamb.
        torch._foreach_mul_(self.ema, alpha)
        torch._foreach_add_(self.ema, torch._foreach_mul(grads, 1 - alpha))
        torch._foreach_add_(grads, torch._foreach_mul(self.ema, lamb))

    def _moving_average(self, grads: list[torch.Tensor]) -> None:
        size = self.cfg.window
        if self.window is None:
            self.window = [g.new_zeros((size, *g.shape)) for g in grads]
        self.window = [ring.to(g.device) for ring, g in zip(self.window, grads)]  # after a resume
        for ring, g in zip(self.window, grads):
            ring[self.seen % size] = g  # the raw gradient, before it is amplified
        self.seen += 1
        if self.seen < size:
            return
        # The reference's order: avg = sum / len, then g + avg * lamb.
        torch._foreach_add_(grads, [ring.sum(0).div_(size).mul_(self.cfg.lamb) for ring in self.window])

    # --- resumable state: tensors shaped like the parameters ([run, ...] in an ensemble) ---------
    def state_dict(self) -> dict:
        if self.cfg.filter == "ema":
            return {"ema": self.ema}
        if self.window is None:
            return {"window": None}
        size, filled = self.cfg.window, min(self.seen, self.cfg.window)
        slots = [(self.seen - filled + k) % size for k in range(filled)]  # oldest first
        return {"window": [[ring[slot] for ring in self.window] for slot in slots], "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        if self.cfg.filter == "ema":
            self.ema = None if state["ema"] is None else [h.clone() for h in state["ema"]]
            return
        self.window, self.seen = None, state.get("seen", 0)
        slots = state["window"] or []
        for k, grads in enumerate(slots):  # oldest first, each into the slot it held
            if self.window is None:
                self.window = [g.new_zeros((self.cfg.window, *g.shape)) for g in grads]
            for ring, g in zip(self.window, grads):
                ring[(self.seen - len(slots) + k) % self.cfg.window] = g
