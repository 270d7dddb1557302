"""Sparse parity: the labels, both data modes (endless and finite), and the hidden-progress measure."""
import math

import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.analysis.figures import plot_run
from toytasks.config import load_config
from toytasks.errors import ConfigError
from toytasks.measures.parity import other_subsets, signal_step
from toytasks.tasks import batch_from_split
from toytasks.tasks.sparse_parity import SparseParity
from toytasks.training import train


def test_labels_are_the_parity_of_the_hidden_bits():
    task = SparseParity(n_bits=12, k=3, subset_seed=5)
    assert len(task.hidden_bits) == 3 and list(task.hidden_bits) == sorted(set(task.hidden_bits))
    assert task.hidden_bits == SparseParity(n_bits=12, k=3, subset_seed=5).hidden_bits
    batch = task.sample(256, torch.Generator().manual_seed(0))
    tokens, targets = batch["tokens"], batch["targets"]
    assert tokens.shape == (256, 13) and (tokens[:, -1] == 2).all() and set(tokens[:, :-1].unique().tolist()) == {0, 1}
    for bits, label in zip(tokens[:, :-1].tolist(), targets[:, -1].tolist()):
        assert label == sum(bits[i] for i in task.hidden_bits) % 2
    assert (targets[:, :-1] == -100).all()
    assert 0.4 < targets[:, -1].float().mean() < 0.6  # balanced


def test_the_docstring_example():
    task = SparseParity(n_bits=6, k=2, subset_seed=0)
    assert task.hidden_bits == (2, 5)
    batch = task.encode(torch.tensor([[1, 0, 1, 1, 1, 0]]))
    assert batch["tokens"].tolist() == [[1, 0, 1, 1, 1, 0, 2]]
    assert batch["targets"].tolist() == [[-100] * 6 + [1]]


def test_endless_or_finite():
    assert not SparseParity(n_bits=10, k=2).finite
    task = SparseParity(n_bits=10, k=2, n_examples=300, frac_train=0.6, data_seed=1)
    assert task.finite and task.n_train == 180
    ds = task.make_dataset()
    train_rows, test_rows = batch_from_split(ds["train"]), batch_from_split(ds["test"])
    assert len(train_rows["tokens"]) == 180 and len(test_rows["tokens"]) == 120
    strings = {tuple(t) for t in train_rows["tokens"].tolist()} | {tuple(t) for t in test_rows["tokens"].tolist()}
    assert len(strings) == 300  # distinct, so nothing is in both splits
    for batch in (train_rows, test_rows):
        assert torch.equal(batch["targets"][:, -1], task.parity(batch["tokens"][:, :-1]))
    again = SparseParity(n_bits=10, k=2, n_examples=300, frac_train=0.6, data_seed=1).make_dataset()
    assert again["train"]["tokens"] == ds["train"]["tokens"]


@pytest.mark.parametrize("fields, field", [
    ({"k": 0}, "k"), ({"k": 11}, "k"), ({"n_examples": 2000}, "n_examples"), ({"n_examples": 100, "frac_train": 1.0}, "frac_train"),
    ({"n_bits": 70, "k": 3, "n_examples": 100}, "n_bits"),
])
def test_bad_input_names_the_field(fields, field):
    with pytest.raises(ConfigError) as error:
        SparseParity(**{"n_bits": 10, "k": 2, **fields})
    assert error.value.field == field


def test_other_subsets_are_distinct_and_never_the_hidden_one():
    hidden = (1, 4, 7)
    others = other_subsets(10, 3, hidden, 50, torch.Generator().manual_seed(0))
    assert len(others) == len(set(others)) == 50 and hidden not in others
    assert all(len(s) == 3 and list(s) == sorted(s) for s in others)
    assert len(other_subsets(5, 2, (0, 1), 100, torch.Generator().manual_seed(0))) == math.comb(5, 2) - 1


def test_signal_step_is_where_the_true_correlation_stays_clear():
    import pandas as pd

    metrics = pd.DataFrame({"step": [0, 50, 100, 150, 200], "parity/corr_true": [0.01, 0.09, 0.03, 0.1, 0.5],
                            "parity/corr_others_max": [0.04] * 5})
    assert signal_step(metrics) == 150
    assert signal_step(metrics.assign(**{"parity/corr_true": [0.01] * 5})) is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = load_config(CONFIGS / "sparse_parity_cpu.yaml", [
        f"out_dir={tmp_path_factory.mktemp('parity')}", "task.n_bits=8", "task.k=2", "max_steps=40",
        "checkpoints.every=20", "eval_every=10", "log_every=20", "model.d_model=16", "model.d_head=4",
        "model.d_mlp=32", "measures.parity.every=10", "measures.parity.n_inputs=512"])
    return load_run(train(config, progress=False))


def test_the_measure_is_logged_and_plotted(tiny_run):
    metrics = tiny_run.metrics.dropna(subset=["parity/corr_true"])
    assert metrics["step"].tolist() == [0, 10, 20, 30, 40]
    for column in ("parity/corr_true", "parity/corr_others_max", "parity/corr_others_rms", "parity/attn_hidden_max"):
        assert metrics[column].between(-1, 1).all(), column
    assert (metrics["parity/corr_others_max"] >= metrics["parity/corr_others_rms"]).all()
    assert (tiny_run.path / "parity.json").exists()
    assert tiny_run.path / "plots" / "hidden_progress.png" in plot_run(tiny_run)


def test_correlation_is_one_for_a_model_that_outputs_the_parity(tiny_run):
    """The definition, on a model whose answer logits are set by hand: logit(1) - logit(0) = +-1
    as the hidden parity is odd or even."""
    measure = tiny_run.measure("parity")
    model = tiny_run.model_at(0)
    chi = 2.0 * tiny_run.task.parity(measure.tokens[:, :-1]) - 1
    logits = torch.zeros(*measure.tokens.shape, 2)
    logits[:, -1, 1] = chi
    original = model.run_with_cache
    model.run_with_cache = lambda tokens, **kwargs: (logits, original(tokens, **kwargs)[1])
    values = measure(model)
    # mean(chi f) / sqrt(mean(f^2)) with f = chi centred: the spread of chi, 1 up to the batch's imbalance.
    assert values["parity/corr_true"].item() == pytest.approx(1, abs=0.01)
    assert values["parity/corr_others_max"].item() < 0.2  # other parities are orthogonal to it


@pytest.mark.slow
def test_plateau_then_sudden_drop_with_hidden_progress(tmp_path):
    """configs/sparse_parity_cpu.yaml cut at step 200: the test loss sits at ln 2 for the first 50
    steps while the attention on the hidden bits already rises, then falls to accuracy >= 0.99
    within ~100 steps, and the output ends correlated with the hidden parity only."""
    config = load_config(CONFIGS / "sparse_parity_cpu.yaml", [f"out_dir={tmp_path}", "max_steps=200"])
    m = load_run(train(config, progress=False)).metrics.dropna(subset=["parity/corr_true"]).set_index("step")
    plateau = m[m["val/loss"] > 0.6].index
    assert m.loc[[25, 50], "val/loss"].between(0.65, 0.75).all(), "no plateau at ln 2"  # (step 0: 0.8)
    last_on_plateau = plateau.max()
    solved = m[(m.index > last_on_plateau) & (m["val/acc"] >= 0.99)].index
    assert len(solved) and solved[0] - last_on_plateau <= 125, "no sudden drop"
    attention = m["parity/attn_hidden_max"]
    assert attention[last_on_plateau] > 1.2 * attention[0], "no hidden progress in the attention"
    final = m.iloc[-1]
    assert final["parity/corr_true"] > 0.95 and final["parity/corr_others_max"] < 0.1
    print(f"plateau until step {last_on_plateau}, accuracy >= 0.99 at {solved[0]}; attention on the hidden "
          f"bits {attention[0]:.3f} -> {attention[last_on_plateau]:.3f} on the plateau")
