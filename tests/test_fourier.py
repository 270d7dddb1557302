"""Fourier progress measures: known answers, and equality with the seed notebook's own code."""
import math

import pytest
import torch

from seed_reference import seed_measures
from toytasks.config import ModelConfig, config_from_dict
from toytasks.fourier import fourier_basis, gini, key_freq_mask, logit_periodicity, neuron_freq_fractions
from toytasks.measures.fourier import FourierMeasure, FourierOptions
from toytasks.model import build_model
from toytasks.tasks.modular_addition import ModularAddition

P = 13


def fourier_measure(task: ModularAddition) -> FourierMeasure:
    """The Fourier measure with its default options, built for a run of `task`."""
    config = config_from_dict({"task": {"name": task.name, "p": task.p, "frac_train": task.frac_train},
                               "max_steps": 1})
    return FourierMeasure(FourierOptions(), config)


def grid(p=P):
    a = torch.arange(p).repeat_interleave(p).float()
    b = torch.arange(p).repeat(p).float()
    return a, b


def test_basis_is_orthonormal_and_in_the_seeds_order():
    basis = fourier_basis(P)
    assert torch.allclose(basis @ basis.T, torch.eye(P), atol=1e-5)
    x = torch.arange(P).float()
    assert torch.allclose(basis[3], torch.sin(2 * torch.pi * 2 * x / P) / math.sqrt(P / 2), atol=1e-5)  # sin 2
    assert torch.allclose(basis[4], torch.cos(2 * torch.pi * 2 * x / P) / math.sqrt(P / 2), atol=1e-5)  # cos 2


def test_pure_periodic_logits_have_no_residual():
    a, b = grid()
    c = torch.arange(P).float()
    w = 2 * torch.pi / P
    logits = 3 * torch.cos(w * 4 * (a[:, None] + b[:, None] - c)) + torch.cos(w * 1 * (a[:, None] + b[:, None] - c))
    mask = torch.zeros(P // 2, dtype=torch.bool)
    mask[[0, 3]] = True  # k = 1 and 4
    cos_sims, residual = logit_periodicity(logits, mask, P)
    assert residual.item() == pytest.approx(0, abs=1e-6)
    assert cos_sims[3].item() == pytest.approx(3 / math.sqrt(10), rel=1e-6)
    assert cos_sims[0].item() == pytest.approx(1 / math.sqrt(10), rel=1e-6)
    assert cos_sims[[1, 2, 4, 5]].abs().max() < 1e-6
    only_four = torch.zeros_like(mask)
    only_four[3] = True
    assert logit_periodicity(logits, only_four, P)[1].item() == pytest.approx(1 / math.sqrt(10), rel=1e-6)


def test_a_single_frequency_neuron_is_explained_by_it():
    a, b = grid()
    w = 2 * torch.pi / P
    acts = torch.stack([torch.cos(w * 3 * a) * torch.cos(w * 3 * b),  # frequency 3, product term
                        torch.sin(w * 5 * (a + b)) + 2,  # frequency 5 (plus a constant)
                        torch.randn(P * P, generator=torch.Generator().manual_seed(0))], dim=1)
    fractions = neuron_freq_fractions(acts, P)
    assert fractions[2, 0].item() == pytest.approx(1, abs=1e-5) and fractions[4, 1].item() == pytest.approx(1, abs=1e-5)
    assert fractions[:, 2].max() < 0.5  # noise spreads over frequencies
    mask = key_freq_mask(fractions, threshold=0.9, min_neuron_frac=0.3)  # one neuron of three is enough
    assert mask.nonzero().flatten().tolist() == [2, 4]


def test_gini():
    assert gini(torch.ones(10)).item() == pytest.approx(0, abs=1e-6)
    assert gini(torch.tensor([0.0] * 9 + [5.0])).item() == pytest.approx(0.9, abs=1e-6)


def assert_seed_numbers(model, task, key_freqs):
    """Every Fourier measure of `model` is the seed notebook's own number (tests/seed_reference.py)."""
    p = task.p
    mask = torch.zeros(p // 2, dtype=torch.bool)
    mask[[k - 1 for k in key_freqs]] = True
    train, test = task.split_indices()
    ref = seed_measures(model, p, train, test, key_freqs)
    measures = fourier_measure(task)
    ours = measures(model, key_mask=mask)
    assert ours["fourier/restricted_loss"].item() == pytest.approx(ref["restricted_loss"].item(), rel=1e-5)
    assert ours["fourier/excluded_loss"].item() == pytest.approx(ref["excluded_loss"].item(), rel=1e-5)
    assert ours["fourier/logit_residual_frac"].item() == pytest.approx(ref["residual_frac"].item(), rel=1e-5, abs=1e-7)
    assert ours["fourier/logit_residual_frac_all_freqs"].item() == pytest.approx(
        ref["residual_cos_sim"].item(), rel=1e-4, abs=1e-6)
    for k in range(1, p // 2 + 1):
        assert ours[f"fourier/logit_cos_sim/k{k}"].item() == pytest.approx(ref["cos_sim_all"][k - 1].item(), abs=1e-5)
    for k in key_freqs:
        assert ours[f"fourier/logit_cos_sim/k{k}"].item() == pytest.approx(ref["cos_sims"][k].item(), abs=1e-5)
    with torch.no_grad():
        _, cache = model.run_with_cache(measures.tokens)
        fractions = neuron_freq_fractions(cache["post", 0, "mlp"][:, -1], p)
    # Dead neurons (no variance) are NaN in both; low-variance ones amplify float32 rounding.
    assert torch.allclose(fractions, ref["neuron_freq_norm"], atol=1e-4, equal_nan=True)
    assert torch.allclose(fourier_basis(p), ref["fourier_basis"], atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_same_numbers_as_the_seed_notebook_at_initialisation(seed):
    task = ModularAddition(p=P, frac_train=0.4)
    model = build_model(ModelConfig(d_model=32, d_head=8, d_mlp=64, freeze_biases=True), task, seed=seed).eval()
    assert_seed_numbers(model, task, key_freqs=[2, 5])


def test_configured_key_freqs_give_the_seed_measures_at_every_step():
    task = ModularAddition(p=P, frac_train=0.4)
    model = build_model(ModelConfig(d_model=32, d_head=8, d_mlp=64, freeze_biases=True), task, seed=0).eval()
    config = config_from_dict({"task": {"name": task.name, "p": P, "frac_train": 0.4}, "max_steps": 1})
    fixed = FourierMeasure(FourierOptions(key_freqs=[2, 5]), config)(model)
    mask = torch.zeros(P // 2, dtype=torch.bool)
    mask[[1, 4]] = True
    assert fixed["fourier/restricted_loss"] == fourier_measure(task)(model, key_mask=mask)["fourier/restricted_loss"]
    assert "fourier/restricted_loss" not in fourier_measure(task)(model)  # without: only at the end
    assert "fourier/restricted_loss_live_freqs" in fixed


def test_live_measures_leave_the_model_as_it_was():
    task = ModularAddition(p=P, frac_train=0.4)
    model = build_model(ModelConfig(d_model=32, d_head=8, d_mlp=64), task, seed=0).train()
    values = fourier_measure(task)(model)
    assert model.training
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())
    assert {"fourier/restricted_loss_live_freqs", "fourier/excluded_loss_live_freqs", "fourier/n_key_freqs",
            "fourier/embed_gini", "fourier/logit_residual_frac_live_freqs", "fourier/logit_residual_frac_all_freqs",
            "fourier/frac_neurons_key", "fourier/logit_cos_sim/k1"} <= set(values)
    assert all(v.device == model.W_E.device and v.dim() == 0 for v in values.values())


def test_excluded_loss_with_nothing_excluded_is_the_train_loss_biases_included():
    """The excluded loss rebuilds the logits from the residual stream: with no frequency removed it
    must be the model's own train loss, also when the biases are trained (non-zero)."""
    task = ModularAddition(p=P, frac_train=0.4)
    model = build_model(ModelConfig(d_model=32, d_head=8, d_mlp=64), task, seed=0).eval()
    with torch.no_grad():
        model.blocks[0].mlp.b_out.copy_(torch.randn_like(model.blocks[0].mlp.b_out))
    measure = fourier_measure(task)
    values = measure(model, key_mask=torch.zeros(P // 2, dtype=torch.bool))
    train = measure.train_idx
    with torch.no_grad():
        logits = model(measure.tokens)[:, -1]
    expected = torch.nn.functional.cross_entropy(logits[train].double(), measure.labels[train])
    assert values["fourier/excluded_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
