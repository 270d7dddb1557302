"""When a run memorised and when it generalised, read off its metrics table: the one definition of
"grokked" that the phases, the run-set summaries and the sweep plots share.

- memorisation ends at the first step where train accuracy reaches 0.99 (GROKKED);
- the grokking step is the first step where test accuracy reaches 0.99;
- circuit formation ends when the test loss, after its peak, has fallen 10% of the way (in log
  space) from that peak to its final value: the start of the visible drop;
- clean-up ends when it has fallen 90% of the way.

The seed marks the three phases by eye (1500 / 13300 / 16600 for its run); these rules do not
depend on the loss scale. The peak, the final value and the crossings are read off the log test
loss after a centred running median (over 2% of the points after memorisation, at least 5), so a
spike of a few steps, at the end or anywhere else, moves no boundary. A phase that has not
happened yet is None.
"""
from __future__ import annotations

import math

import pandas as pd

GROKKED = 0.99


def first_step_reaching(metrics: pd.DataFrame, column: str, threshold: float = GROKKED) -> int | None:
    """The first step at which `column` reaches `threshold` (None if never, or no such column)."""
    if column not in metrics.columns:
        return None
    reached = metrics.loc[metrics[column] >= threshold, "step"]
    return int(reached.iloc[0]) if len(reached) else None


def grokking_step(metrics: pd.DataFrame) -> int | None:
    """The first step at which test accuracy reaches 0.99."""
    return first_step_reaching(metrics, "val/acc")


def smooth(values: pd.Series) -> pd.Series:
    """A centred running median: a few outlying steps do not change it."""
    window = max(5, round(0.02 * len(values))) | 1  # odd, so that it is centred on a step
    return values.rolling(window, center=True, min_periods=1).median()


def milestones(metrics: pd.DataFrame) -> dict[str, int | None]:
    """What every run's summary holds: when it memorised (train accuracy 0.99) and grokked (test)."""
    return {"memorisation_end": first_step_reaching(metrics, "train/acc"), "grokking_step": grokking_step(metrics)}


def estimate_phases(metrics: pd.DataFrame) -> dict[str, int | None]:
    phases = {"memorisation_end": None, "circuit_formation_end": None, "cleanup_end": None}
    phases["memorisation_end"] = first_step_reaching(metrics, "train/acc")
    if phases["memorisation_end"] is None or "val/loss" not in metrics.columns:
        return phases
    test = metrics.dropna(subset=["val/loss"])
    test = test[test["step"] >= phases["memorisation_end"]]
    if len(test) < 2:
        return phases
    log_loss = smooth(test["val/loss"].clip(lower=1e-12).map(math.log))
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
