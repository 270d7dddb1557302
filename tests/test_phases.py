"""The phase estimates: where a grokking curve memorises, forms its circuit and cleans up."""
import math

import numpy as np
import pandas as pd
import pytest

from toytasks.phases import estimate_phases, grokking_step, milestones


def grokking_curve(steps=2000, memorised=50, drop=(800, 1200)) -> pd.DataFrame:
    """Train accuracy 1 from `memorised`; the test loss rises to a plateau of 10, then falls
    log-linearly to 1e-6 between the two `drop` steps; test accuracy follows."""
    step = np.arange(steps + 1)
    log_test = np.where(step < drop[0], math.log(10), math.log(10) + (step - drop[0]) / (drop[1] - drop[0]) * (
        math.log(1e-6) - math.log(10)))
    log_test = np.maximum(log_test, math.log(1e-6))
    log_test[:memorised] = math.log(4)  # before memorisation: near chance, below the later peak
    return pd.DataFrame({"step": step, "train/acc": np.where(step >= memorised, 1.0, 0.5),
                         "val/loss": np.exp(log_test), "val/acc": np.where(step >= 1100, 1.0, 0.1)})


def test_phases_of_a_clean_curve():
    phases = estimate_phases(grokking_curve())
    assert phases["memorisation_end"] == 50
    assert phases["circuit_formation_end"] == pytest.approx(800 + 0.1 * 400, abs=5)
    assert phases["cleanup_end"] == pytest.approx(800 + 0.9 * 400, abs=5)


@pytest.mark.parametrize("spike_at", [1990, 2000, 500, 1500])
def test_a_spike_moves_no_boundary(spike_at):
    """One step whose test loss jumps 10^8-fold, late or in the middle: the same phases."""
    clean = estimate_phases(grokking_curve())
    spiked = grokking_curve()
    spiked.loc[spiked["step"] == spike_at, "val/loss"] *= 1e8
    assert estimate_phases(spiked) == clean


def test_no_grokking_yet():
    curve = grokking_curve(drop=(5000, 6000))  # the drop lies beyond the end
    assert estimate_phases(curve) == {"memorisation_end": 50, "circuit_formation_end": None, "cleanup_end": None}
    assert estimate_phases(curve.assign(**{"train/acc": 0.5}))["memorisation_end"] is None


def test_milestones():
    curve = grokking_curve()
    assert milestones(curve) == {"memorisation_end": 50, "grokking_step": 1100} and grokking_step(curve) == 1100
