"""The local learning coefficient (toytasks/measures/llc.py, devinterp's estimator) and essential
dynamics (toytasks/analysis/essential_dynamics.py)."""
import dataclasses
import json
import random
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.analysis.essential_dynamics import fixed_batch, plot_trajectory, turning_angles
from toytasks.analysis.figures import plot_run
from toytasks.analysis.offline import measure_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.errors import ToytasksError
from toytasks.measures import llc as llc_module
from toytasks.measures.llc import LLCOptions, estimate_llc
from toytasks.tasks import IGNORE
from toytasks.training import train

pytest.importorskip("devinterp")
SHORT = {"num_chains": 2, "num_draws": 15, "batch_size": 16}  # seconds for a tiny run's 4 checkpoints


class Quadratic(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(d))


def expected_sgld_estimate(curvature, lr, n_beta, localization, draws):
    """What devinterp's estimate averages to for L(w) = 1/2 sum_i h_i w_i^2 from w* = 0: each
    coordinate follows w <- r w + sqrt(lr) N(0, 1), r = 1 - lr (n_beta h + localization) / 2, so
    E[w_t^2] = lr (1 - r^2t) / (1 - r^2), and the estimate is n_beta E[L] averaged over t < draws.
    It tends to (the number of h_i > 0) / 2 as lr -> 0 and draws -> infinity."""
    r = 1 - lr * (n_beta * curvature + localization) / 2
    t = torch.arange(draws, dtype=torch.float64)[:, None]
    variance = lr * (1 - r ** (2 * t)) / (1 - r ** 2)  # [draw, coordinate]
    loss = torch.where(curvature > 0, 0.5 * curvature * variance, 0.0)  # flat directions cost nothing
    return float(n_beta * loss.sum(1).mean())


@pytest.mark.parametrize("flat", [0, 50])
def test_llc_of_a_quadratic_minimum_is_half_its_rank(flat):
    """L(w) = 1/2 sum_i h_i w_i^2 at w* = 0: the LLC is d/2 for d parameters when every h_i > 0
    (non-degenerate), and counts only the curved directions when some are flat (h_i = 0). The
    estimate is what SGLD theory predicts for these settings, within its sampling error, and that
    is within a few percent of the LLC."""
    d = 100
    curvature = torch.cat([torch.zeros(flat, dtype=torch.float64), torch.linspace(1, 3, d - flat, dtype=torch.float64)])

    def loss(model, batch):  # the same for every batch, so minibatches add no noise
        return 0.5 * (curvature * model.w.double() ** 2).sum() + 0.0 * batch["tokens"].sum()

    options = LLCOptions(lr=1e-2, n_beta=10.0, localization=0.0, num_chains=4, num_draws=200, batch_size=8)
    result = estimate_llc(Quadratic(d), loss, {"tokens": torch.zeros(8, 2, dtype=torch.long)}, options)
    assert result["init_loss"] == 0.0 and result["trace"].shape == (4, 200)
    expected = expected_sgld_estimate(curvature, options.lr, options.n_beta, options.localization, options.num_draws)
    assert expected == pytest.approx((d - flat) / 2, rel=0.03)  # the settings' bias is small
    standard_error = result["std"] / (options.num_chains - 1) ** 0.5
    assert abs(result["mean"] - expected) < 4 * standard_error + 0.01 * expected
    assert result["mean"] == pytest.approx((d - flat) / 2, rel=0.1)


def test_same_seed_same_estimate_also_with_gradients_turned_off():
    """The notebooks turn gradients off globally; SGLD needs them, and the seed fixes the numbers."""
    def loss(model, batch):
        return 0.5 * (model.w.double() ** 2).sum() + 0.0 * batch["tokens"].sum()

    data, options = {"tokens": torch.zeros(8, 2, dtype=torch.long)}, LLCOptions(lr=1e-2, n_beta=10.0, num_chains=2,
                                                                                    num_draws=20, batch_size=8)
    first = estimate_llc(Quadratic(10), loss, data, options)
    with torch.no_grad():
        again = estimate_llc(Quadratic(10), loss, data, options)
    assert first["mean"] > 0 and np.array_equal(first["trace"], again["trace"])
    other = estimate_llc(Quadratic(10), loss, data, dataclasses.replace(options, seed=1))
    assert not np.array_equal(first["trace"], other["trace"])


@pytest.fixture
def grokking_run(tiny_runs, tmp_path):
    """A copy of the tiny grokking run (checkpoints 0, 1, 2, 4, 8, 10, 20, 30), to write into."""
    return load_run(shutil.copytree(tiny_runs("grokking"), tmp_path / "run"))


def llc_values(run) -> pd.DataFrame:
    return run.metrics.dropna(subset=["llc/mean"])[["step", "llc/mean", "llc/std"]].reset_index(drop=True)


@pytest.mark.slow  # about 40 s: the LLC over a whole series, three times
def test_series_is_seeded_skips_what_it_has_and_keeps_what_it_computed(grokking_run, monkeypatch):
    run, calls = grokking_run, []
    n = len(run.steps)
    estimate = llc_module.estimate_llc
    monkeypatch.setattr(llc_module, "estimate_llc", lambda *a: calls.append(1) or estimate(*a))
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

    assert {"llc/mean", "llc/std"} <= set(measure_run(run, progress=False, extra=["llc"], options={"llc": SHORT}))
    first = llc_values(run)
    assert first["step"].tolist() == run.steps and len(calls) == n
    assert np.isfinite(first[["llc/mean", "llc/std"]]).all().all() and (first["llc/std"] > 0).all()
    assert torch.equal(torch.get_rng_state(), states[0])  # devinterp's seeding is undone
    assert (np.random.get_state()[1] == states[1]).all() and random.getstate() == states[2]

    calls.clear()
    table = run.paths.metrics.read_bytes()
    measure_run(run, progress=False, extra=["llc"], options={"llc": SHORT})  # nothing left to do
    assert not calls and run.paths.metrics.read_bytes() == table

    # Interrupted at the third checkpoint: the first two are kept, and the rerun does the rest,
    # with the numbers an uninterrupted run gives.
    (run.path / "metrics.csv").write_text(run.metrics.drop(columns=["llc/mean", "llc/std"]).to_csv(index=False))

    class Interrupted(Exception):  # as Ctrl-C would, mid-series
        pass

    def interrupted(*args):
        if len(calls) == 3:
            raise Interrupted
        return estimate(*args)

    monkeypatch.setattr(llc_module, "estimate_llc", lambda *a: calls.append(1) or interrupted(*a))
    with pytest.raises(Interrupted):
        measure_run(run, progress=False, extra=["llc"], options={"llc": SHORT})
    assert llc_values(run)["step"].tolist() == run.steps[:2]
    monkeypatch.setattr(llc_module, "estimate_llc", lambda *a: calls.append(1) or estimate(*a))
    calls.clear()
    measure_run(run, progress=False, extra=["llc"], options={"llc": SHORT})
    assert len(calls) == n - 2
    pd.testing.assert_frame_equal(llc_values(run), first)

    # Other settings: every checkpoint again, other numbers.
    calls.clear()
    measure_run(run, progress=False, extra=["llc"], options={"llc": {**SHORT, "seed": 1}})
    assert len(calls) == n and not np.allclose(llc_values(run)["llc/mean"], first["llc/mean"])


def test_the_same_estimate_during_training_and_from_the_series(tmp_path):
    config = load_config(CONFIGS / "grokking_cpu.yaml", [
        f"out_dir={tmp_path}", "task.p=11", "max_steps=20", "checkpoints.every=10", "checkpoints.log_spaced=false",
        "log_every=10", "model.d_model=16", "model.d_head=4", "model.d_mlp=32", "measures.fourier=null",
        "measures.llc={every: 10, num_chains: 2, num_draws: 10, batch_size: 16}"])
    run = load_run(train(config, progress=False))
    during = llc_values(run)
    assert during["step"].tolist() == [0, 10, 20]
    measure_run(run, progress=False)  # no settings file from training: all recomputed
    pd.testing.assert_frame_equal(llc_values(run), during)


def test_traces_are_kept_on_request_and_drawn(grokking_run):
    run = grokking_run
    measure_run(run, progress=False, extra=["llc"], options={"llc": {**SHORT, "traces": [30]}})
    traces = pd.read_csv(run.path / "llc" / "traces.csv")
    assert set(traces["step"]) == {30} and len(traces) == SHORT["num_chains"] * SHORT["num_draws"]
    assert traces["sgld_step"].max() == SHORT["num_draws"] - 1
    per_chain = traces.groupby("chain")["llc"].first()
    assert per_chain.mean() == pytest.approx(llc_values(run)["llc/mean"].iloc[-1], rel=1e-5)
    # Each chain's LLC is n_beta times its mean loss above L(w*), as devinterp computes it.
    n_beta = LLCOptions().n_beta
    gap = traces.groupby("chain")["loss"].mean() - traces["init_loss"].iloc[0]
    assert (n_beta * gap).to_numpy() == pytest.approx(per_chain.to_numpy(), rel=1e-4)
    assert {"llc.png", "llc_traces.png"} <= {path.name for path in plot_run(run)}


def test_missing_devinterp_is_a_one_line_error(grokking_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "devinterp", None)  # `import devinterp...` raises ImportError
    monkeypatch.setitem(sys.modules, "devinterp.slt.llc", None)
    with pytest.raises(ToytasksError, match=r'pip install -e "\.\[devinterp\]"'):
        estimate_llc(Quadratic(2), lambda model, batch: model.w.sum(), {"tokens": torch.zeros(4, 2)}, LLCOptions())
    assert main(["measure", str(grokking_run.path), "--with", "llc", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error == 'error: the llc measure needs devinterp: pip install -e ".[devinterp]"\n'


def test_measure_command_takes_the_measures_options(grokking_run, capsys):
    path = str(grokking_run.path)
    assert main(["measure", path, "--with", "llc", "llc.num_draws=5", "llc.num_chains=1", "--no-progress"]) == 0
    assert llc_values(grokking_run)["step"].tolist() == grokking_run.steps
    assert json.loads((grokking_run.path / "llc" / "settings.json").read_text())["num_draws"] == 5
    assert main(["measure", path, "--with", "llc", "llc.bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("error: measures.llc.bogus: unknown key; allowed: ")
    assert main(["measure", path, "num_draws=5"]) == 2
    assert main(["measure", path, "llc.num_draws=5"]) == 2  # without --with llc
    assert "add --with llc" in capsys.readouterr().err


# --- essential dynamics ------------------------------------------------------------------------------

def test_essential_dynamics_keeps_the_distances_between_checkpoints(grokking_run):
    """With as many components as checkpoints, the PC coordinates are the centred outputs in an
    orthonormal basis: the distance between two checkpoints is that between their logits."""
    run = grokking_run
    frame = run.essential_dynamics(n_components=len(run.steps), n_examples=50)
    assert list(frame.columns) == ["step", *(f"PC{i + 1}" for i in range(len(run.steps)))]
    assert frame["step"].tolist() == run.steps
    variance = frame.attrs["explained_variance"]
    assert variance == sorted(variance, reverse=True) and sum(variance) == pytest.approx(1.0)
    points = frame.filter(like="PC").to_numpy()
    assert points.mean(axis=0) == pytest.approx(0.0, abs=1e-9)

    batch = fixed_batch(run, 50, seed=0)
    assert len(batch["tokens"]) == 50 and (batch["targets"][:, -1] != IGNORE).all()
    with torch.no_grad():
        logits = torch.stack([run.model_at(s).original_model(batch["tokens"])[:, -1].flatten().double() for s in run.steps])
    distances = torch.cdist(logits, logits).numpy()
    assert np.linalg.norm(points[:, None] - points[None], axis=-1) == pytest.approx(distances, rel=1e-6, abs=1e-6)

    three = run.essential_dynamics(n_components=3, n_examples=50)
    assert three.filter(like="PC").to_numpy() == pytest.approx(points[:, :3])
    assert plot_trajectory(three, {"memorisation_end": 12}).axes


def test_turning_angles():
    square = pd.DataFrame({"step": range(5), "PC1": [0, 1, 1, 0, 0], "PC2": [0, 0, 1, 1, 2]})
    assert turning_angles(square).tolist()[1:-1] == pytest.approx([90, 90, 90])
    assert np.isnan(turning_angles(square).iloc[0])
