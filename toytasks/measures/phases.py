"""The three phases of grokking, estimated from a run's metrics table.

The seed marks them by eye (1500 / 13300 / 16600 for its run). Here they are read off the curves
with rules that do not depend on the loss scale:

- memorisation ends at the first step where train accuracy reaches 0.99;
- circuit formation ends when the test loss, after its peak, has fallen 10% of the way (in log
  space) from that peak to its final value: the start of the visible drop;
- clean-up ends when it has fallen 90% of the way.

A phase that has not happened yet is None.
"""
from __future__ import annotations

import math

import pandas as pd


def estimate_phases(metrics: pd.DataFrame) -> dict[str, int | None]:
    phases = {"memorisation_end": None, "circuit_formation_end": None, "cleanup_end": None}
    train = metrics.dropna(subset=["train/acc"])
    memorised = train[train["train/acc"] >= 0.99]
    if memorised.empty:
        return phases
    phases["memorisation_end"] = int(memorised["step"].iloc[0])
    test = metrics.dropna(subset=["val/loss"])
    test = test[test["step"] >= phases["memorisation_end"]]
    if len(test) < 2:
        return phases
    log_loss = test["val/loss"].clip(lower=1e-12).map(math.log)
    peak = log_loss.idxmax()
    high, low = log_loss[peak], log_loss.iloc[-1]
    if high - low < math.log(10):  # less than a 10x drop: no grokking (yet)
        return phases
    after = test.loc[peak:]
    after_log = log_loss.loc[peak:]
    for name, fraction in (("circuit_formation_end", 0.1), ("cleanup_end", 0.9)):
        reached = after[after_log <= high - fraction * (high - low)]
        phases[name] = int(reached["step"].iloc[0])
    return phases
