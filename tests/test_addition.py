"""Multi-digit addition: the encoding against plain Python, and the per-digit measure."""
import math

import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.analysis.figures import plot_run
from toytasks.config import load_config
from toytasks.errors import ConfigError
from toytasks.tasks.addition import Addition
from toytasks.training import train


def test_sums_against_plain_python():
    task = Addition(n_digits=4)
    batch = task.sample(200, torch.Generator().manual_seed(0))
    tokens, targets = batch["tokens"].tolist(), batch["targets"].tolist()
    for row, target in zip(tokens, targets):
        a = int("".join(map(str, row[:4])))
        b = int("".join(map(str, row[5:9])))
        assert row[4] == 10 and row[9] == 11
        total = f"{a + b:05d}"
        assert row[10:] == [int(c) for c in total[:-1]]  # the sum's digits as inputs, but the last
        assert target[:9] == [-100] * 9 and target[9:] == [int(c) for c in total]
    assert len(tokens[0]) == task.n_ctx == 14


def test_the_docstring_example():
    task = Addition(n_digits=3)
    digits = task.digits(torch.tensor([457, 968, 1425]), 4)
    assert digits.tolist() == [[0, 4, 5, 7], [0, 9, 6, 8], [1, 4, 2, 5]]
    positions = task.answer_positions()
    assert positions == {"digit0": 10, "digit1": 9, "digit2": 8, "digit3": 7}  # `=` predicts the carry


@pytest.mark.parametrize("value", [0, 19])
def test_bad_input_names_the_field(value):
    with pytest.raises(ConfigError) as error:
        Addition(n_digits=value)
    assert error.value.field == "n_digits"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = load_config(CONFIGS / "addition_cpu.yaml", [
        f"out_dir={tmp_path_factory.mktemp('addition')}", "task.n_digits=2", "max_steps=30",
        "checkpoints.every=10", "eval_every=10", "log_every=10", "model.d_model=16", "model.d_head=4",
        "model.d_mlp=32", "measures.digits.every=10", "measures.digits.n_sums=256"])
    return load_run(train(config, progress=False))


def test_per_digit_loss_averages_to_the_test_loss(tiny_run):
    """Each digit's loss on the measure's own batch; their mean is a test loss of the same model."""
    metrics = tiny_run.metrics.set_index("step")
    columns = [f"val/loss/digit{i}" for i in range(3)]
    assert metrics.loc[[0, 10, 20, 30], columns].notna().all().all()
    measure = tiny_run.measure("digits")
    model = tiny_run.model_at(30)
    with torch.no_grad():
        logits = model(measure.tokens)
    scored = measure.targets != -100
    mean = torch.nn.functional.cross_entropy(logits[scored].double(), measure.targets[scored]).item()
    assert metrics.loc[30, columns].mean() == pytest.approx(mean, rel=1e-6)  # every digit weighs the same
    assert ((metrics.loc[:, [f"val/acc/digit{i}" for i in range(3)]].dropna() <= 1).all().all())


def test_summary_and_plot(tiny_run):
    import json

    summary = json.loads((tiny_run.path / "digits.json").read_text())
    assert set(summary["learnt_step"]) == {"digit0", "digit1", "digit2"}
    assert tiny_run.path / "plots" / "digit_loss.png" in plot_run(tiny_run)


@pytest.mark.slow
def test_each_digit_has_its_own_phase_change(tmp_path):
    """configs/addition_cpu.yaml cut at step 300: the final carry (digit5) is learnt within ~75
    steps while every other digit's loss still sits at ln 10 (chance); the units digit (digit0)
    then drops from chance to near zero within ~100 steps, and the middle digits lag behind it."""
    config = load_config(CONFIGS / "addition_cpu.yaml", [f"out_dir={tmp_path}", "max_steps=300"])
    m = load_run(train(config, progress=False)).metrics.dropna(subset=["val/loss/digit0"]).set_index("step")
    chance = math.log(10)
    carry_learnt = m[m["val/acc/digit5"] >= 0.95].index[0]
    assert m.loc[carry_learnt, "val/loss/digit0"] > 0.95 * chance, "the units digit was not still at chance"
    on_plateau = m[m["val/loss/digit0"] > 0.9 * chance].index
    drop_start = on_plateau[on_plateau > carry_learnt].max()
    learnt = m[(m.index > drop_start) & (m["val/loss/digit0"] < 0.25)].index
    assert len(learnt) and learnt[0] - drop_start <= 100, "the units digit's drop was not sudden"
    assert m.loc[learnt[0], "val/acc/digit2"] < 0.9, "the middle digits did not lag behind the units"
    print(f"digit5 learnt by {carry_learnt}; digit0 from chance at {drop_start} to < 0.25 at {learnt[0]}")
