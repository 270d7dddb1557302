"""The CPU grokking run shows the grokking shape and the progress measures tell its story.

One training run of configs/grokking_cpu.yaml (about 2 minutes on 2 cores) serves every test here.
"""
import json
import math

import pytest

from conftest import CONFIGS
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.training import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = load_config(CONFIGS / "grokking_cpu.yaml", [f"out_dir={tmp_path_factory.mktemp('runs')}"])
    return load_run(train(config, progress=False))


def test_grokking_shape(run):
    m = run.metrics
    at_checkpoints = m[m["step"].isin(run.steps)]
    memorised = at_checkpoints[(at_checkpoints["train/acc"] >= 0.99) & (at_checkpoints["val/acc"] <= 0.5)]
    assert not memorised.empty, "no checkpoint with the training set memorised and the test set not"
    first = memorised["step"].iloc[0]
    later = at_checkpoints[(at_checkpoints["step"] > first) & (at_checkpoints["val/acc"] >= 0.99)]
    assert not later.empty, "test accuracy never reached 0.99 after memorisation"
    print(f"memorised at step {first}, grokked (test acc >= 0.99) at step {later['step'].iloc[0]}")


def test_restricted_loss_from_log_p_to_test_loss(run):
    m = run.metrics.set_index("step")
    p, last = run.task.p, run.steps[-1]
    assert m.loc[0, "fourier/restricted_loss"] == pytest.approx(math.log(p), rel=0.05)
    assert m.loc[last, "fourier/restricted_loss"] < 1e-3 and m.loc[last, "val/loss"] < 1e-3


def test_restricted_loss_falls_before_test_loss(run):
    m = run.metrics.dropna(subset=["fourier/restricted_loss"])
    first_below = lambda column: m[m[column] < 0.1]["step"].iloc[0]  # noqa: E731
    restricted, test = first_below("fourier/restricted_loss"), first_below("val/loss")
    assert restricted + 200 <= test, (restricted, test)


def test_excluded_loss_rises_while_train_loss_stays_low(run):
    phases = json.loads((run.path / "phases.json").read_text())
    m = run.metrics.dropna(subset=["fourier/excluded_loss"]).set_index("step")
    after = m[m.index >= phases["memorisation_end"]]
    start = after["fourier/excluded_loss"].iloc[0]
    risen = after[(after["fourier/excluded_loss"] > 5 * start) & (after["train/loss"] < 1e-3)]
    assert not risen.empty


def test_phases_are_ordered(run):
    phases = json.loads((run.path / "phases.json").read_text())
    assert 0 < phases["memorisation_end"] < phases["circuit_formation_end"] < phases["cleanup_end"] <= run.steps[-1]


def test_measures_in_table_and_tensorboard(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = ["fourier/restricted_loss", "fourier/excluded_loss", "fourier/logit_residual_frac",
             "fourier/restricted_loss_live_freqs", "fourier/excluded_loss_live_freqs", "fourier/n_key_freqs",
             "fourier/embed_gini", "fourier/logit_residual_frac_all_freqs", "weights/sq_norm"]
    m = run.metrics
    for name in names:
        assert m.dropna(subset=[name])["step"].tolist()[:3] == run.steps[:3], name
    n_key = int(m.set_index("step").loc[run.steps[-1], "fourier/n_key_freqs"])
    key_columns = [c for c in m.columns if c.startswith("fourier/key_freq/")]
    assert int(m.set_index("step").loc[run.steps[-1], key_columns].sum()) == n_key >= 1
    tags = set(EventAccumulator(str(run.path / "tb")).Reload().Tags()["scalars"])
    assert set(names) <= tags


def test_offline_measure_reproduces_and_is_idempotent(run, capsys):
    table = run.path / "metrics.csv"
    live = run.metrics.set_index("step")
    assert main(["measure", str(run.path), "--no-progress"]) == 0
    once = table.read_bytes()
    offline = run.metrics.set_index("step")
    for name in ("fourier/restricted_loss", "fourier/excluded_loss", "fourier/logit_residual_frac",
                 "fourier/restricted_loss_live_freqs", "fourier/logit_residual_frac_all_freqs"):
        for step in run.steps[::5]:
            assert offline.loc[step, name] == pytest.approx(live.loc[step, name], rel=1e-4, abs=1e-9)
    assert main(["measure", str(run.path), "--no-progress"]) == 0
    assert table.read_bytes() == once


@pytest.mark.parametrize("step", [600, "last"])
def test_measures_are_the_seed_notebooks_on_trained_checkpoints(run, step):
    """On the trained model, with the run's final key frequencies: the seed's own cells agree."""
    from test_fourier import assert_seed_numbers

    step = run.steps[-1] if step == "last" else step
    key_freqs = json.loads((run.path / "phases.json").read_text())["key_freqs"]
    assert key_freqs
    assert_seed_numbers(run.model_at(step), run.task, key_freqs)
    m = run.metrics.set_index("step")  # and what training logged is that number
    ours = run.measure("fourier")(run.model_at(step), key_mask=None)
    assert m.loc[step, "fourier/logit_residual_frac_all_freqs"] == pytest.approx(
        ours["fourier/logit_residual_frac_all_freqs"].item(), rel=1e-5)


def test_plots(run, capsys):
    assert main(["plot", str(run.path)]) == 0
    for name in ("loss.png", "restricted_excluded_loss.png", "embed_fourier_norms.png"):
        assert (run.path / "plots" / name).stat().st_size > 10_000
