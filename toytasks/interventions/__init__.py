"""Interventions on the optimizer step, each switched on in the config's `optim` section and each
one file here: Grokfast (grokfast.py), ⊥Grad (orthograd.py) and a fixed weight norm
(fixed_norm.py). The loss switches live in toytasks/loss.py, the initial weight scale in
toytasks/model.py.

The LightningModule calls this in two places, for one run and for an ensemble alike:

    on_gradients(runs)   after the backward pass, before clipping and the optimizer step:
                         Grokfast filters each gradient, then ⊥Grad projects it
    after_step(runs)     straight after the optimizer step, before anything is saved or
                         measured: the fixed weight norm rescales the weights

Order: Grokfast feeds what the optimizer sees (its reference code filters just before
`optimizer.step()`), and ⊥Grad wraps the optimizer's step (its reference is an optimizer wrapper), so it
comes last; it keeps every tensor's norm, so clipping after it clips by the same factor as before it.

`runs` is the module's replicas (toytasks/training/replicas.py): `trainable()` gives the trained
parameters, [run, ...] when several runs are stacked, and `per_run(t)` views one as [runs, n].
Nothing here depends on the learning rate or weight decay, so runs stacked with different ones
would be handled run by run too.
"""
from __future__ import annotations

from typing import Optional

from ..config import OptimConfig
from .fixed_norm import FixedWeightNorm
from .grokfast import Grokfast
from .orthograd import orthogonalise


class Interventions:
    def __init__(self, cfg: OptimConfig, runs):
        """Built with the module, while `runs` holds the initial weights (the fixed norm's target)."""
        self.grokfast: Optional[Grokfast] = Grokfast(cfg.grokfast) if cfg.grokfast else None
        self.orthograd = cfg.orthograd
        self.fixed_norm = FixedWeightNorm(runs.trainable(), runs.per_run) if cfg.fixed_weight_norm else None

    def on_gradients(self, runs) -> None:
        params = runs.trainable()
        if any(p.grad is None for p in params):  # a skipped step (on_nonfinite: skip): nothing to filter
            return
        if self.grokfast:
            self.grokfast([p.grad for p in params])
        if self.orthograd:
            orthogonalise(params, runs.per_run)

    def after_step(self, runs) -> None:
        if self.fixed_norm:
            self.fixed_norm(runs.trainable(), runs.per_run)

    def state_dict(self) -> dict:
        """What a resumed run needs: the Grokfast filter's memory (per-run tensors: [run, ...] when stacked)."""
        return {"grokfast": self.grokfast.state_dict()} if self.grokfast else {}

    def load_state_dict(self, state: dict) -> None:
        if self.grokfast and state.get("grokfast"):
            self.grokfast.load_state_dict(state["grokfast"])
