"""The Fourier analysis of modular addition (Nanda et al. 2023; the seed's Grokking_Demo), as pure
functions of tensors, vectorised over neurons and frequencies and kept on the tensors' device.

Every definition follows the seed notebook ("Analyse Neurons", "Black Box Methods + Progress
Measures"):

- the Fourier basis over 0..p-1: constant, then sin k and cos k for k = 1..p//2, each row
  normalised;
- each neuron's fraction of variance explained by frequency k (its 2-D Fourier transform over
  (a, b) with the constant term removed; the 3x3 block {const, sin k, cos k}^2); key frequencies
  are those that explain at least `threshold` of the variance of enough neurons;
- the cos(w(a+b)), sin(w(a+b)) components of the MLP activations at a set of frequencies (what
  the restricted and excluded losses keep or remove);
- logit periodicity: the cosine similarity of the logit cube L[a, b, c] with cos(w(a+b-c)) for
  every frequency, and the residual fraction left by a set of them (or by all of them);
- the Gini coefficient (sparsity) of the embedding's norms in the Fourier basis.

Frequency sets are boolean masks over 1..p//2, so nothing here needs their number on the host.
toytasks/measures/fourier.py turns these into progress measures; the grokking notebook uses them
directly.
"""
from __future__ import annotations

import math

import torch


def fourier_basis(p: int, device=None) -> torch.Tensor:
    """[p, p]: rows constant, sin 1, cos 1, sin 2, cos 2, ..., normalised (the seed's order)."""
    x = torch.arange(p, device=device, dtype=torch.float32)
    freqs = torch.arange(1, p // 2 + 1, device=device, dtype=torch.float32)[:, None]
    angles = 2 * torch.pi * freqs * x / p  # [p//2, p]
    rows = torch.stack([torch.sin(angles), torch.cos(angles)], dim=1).flatten(0, 1)  # sin1, cos1, ...
    basis = torch.cat([torch.ones(1, p, device=device), rows])
    return basis / basis.norm(dim=-1, keepdim=True)


def fourier_basis_names(p: int) -> list[str]:
    return ["Constant"] + [f"{trig} {k}" for k in range(1, p // 2 + 1) for trig in ("Sin", "Cos")]


def neuron_freq_fractions(neuron_acts: torch.Tensor, p: int) -> torch.Tensor:
    """[p//2, d_mlp]: fraction of each neuron's variance over (a, b) explained by frequency k.

    neuron_acts: [p*p, d_mlp], rows in (a, b) order. The seed's "Neuron Clusters" cell.
    """
    basis = fourier_basis(p, neuron_acts.device)
    grid = neuron_acts.T.reshape(-1, p, p)  # [neuron, a, b]
    spectrum = basis @ grid @ basis.T  # [neuron, fa, fb]
    spectrum[:, 0, 0] = 0.0  # the mean: "Center these by removing the mean"
    power = spectrum.pow(2)
    k = torch.arange(p // 2, device=power.device)
    block = torch.stack([torch.zeros_like(k), 2 * k + 1, 2 * k + 2], dim=1)  # [p//2, 3]: const, sin, cos
    per_freq = power[:, block[:, :, None], block[:, None, :]].sum(dim=(-1, -2))  # [neuron, p//2]
    return (per_freq / power.sum(dim=(-1, -2))[:, None]).T


def key_freq_mask(fractions: torch.Tensor, threshold: float, min_neuron_frac: float) -> torch.Tensor:
    """[p//2] bool: frequencies that at least `min_neuron_frac` of the neurons belong to."""
    best_frac, best_freq = fractions.nan_to_num(0.0).max(dim=0)  # [d_mlp]; dead neurons are NaN
    belongs = torch.nn.functional.one_hot(best_freq, fractions.shape[0]) * (best_frac >= threshold)[:, None]
    min_neurons = max(1, math.ceil(min_neuron_frac * fractions.shape[1]))
    return belongs.sum(dim=0) >= min_neurons


def sum_directions(p: int, device=None, sign: int = 1) -> torch.Tensor:
    """[p//2, 2, p*p]: cos(w(a+b)) and sin(w(a+b)) over the (a, b) grid, each normalised
    (with sign=-1, of a-b: the same analysis for modular subtraction)."""
    s = (torch.arange(p, device=device)[:, None] + sign * torch.arange(p, device=device)[None, :]).flatten()
    freqs = torch.arange(1, p // 2 + 1, device=device)[:, None]
    angles = 2 * torch.pi / p * (freqs * s)
    directions = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return directions / directions.norm(dim=-1, keepdim=True)


def key_components(neuron_acts: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """[p*p, d_mlp]: the part of the activations along the key frequencies' cos/sin(w(a+b))."""
    coefficients = torch.einsum("kti,in->ktn", directions, neuron_acts)  # [p//2, 2, d_mlp]
    coefficients = coefficients * mask[:, None, None]
    return torch.einsum("kti,ktn->in", directions, coefficients)


def cross_entropy64(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The seed's loss_fn: mean negative log-probability of the label, in float64."""
    log_probs = logits.to(torch.float64).log_softmax(dim=-1)
    return -log_probs.gather(dim=-1, index=labels[:, None])[:, 0].mean()


def logit_cos_coefficients(logits: torch.Tensor, p: int, sign: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of the logit cube L[a, b, c] onto the normalised cube cos(w_k(a+b-c)) for each
    frequency k = 1..p//2 (the seed's `get_cos_coeffs`), and |L|^2. logits: [p*p, p], rows in (a, b)
    order; float64. sign=-1 projects onto cos(w_k(a-b-c)) instead (modular subtraction).

    cos(w(a+b-c)) = cos(w(a+b)) cos(wc) + sin(w(a+b)) sin(wc), so the projections are computed
    without building the seed's [p//2, p, p, p] cube.
    """
    logits = logits.to(torch.float64)
    x = torch.arange(p, device=logits.device, dtype=torch.float64)
    w = 2 * torch.pi / p * torch.arange(1, p // 2 + 1, device=logits.device, dtype=torch.float64)[:, None]
    s = (x[:, None] + sign * x[None, :]).flatten()  # a + b (or a - b), [p*p]
    u = torch.stack([torch.cos(w * s), torch.sin(w * s)], dim=1)  # [p//2, 2, p*p]
    v = torch.stack([torch.cos(w * x), torch.sin(w * x)], dim=1)  # [p//2, 2, p]
    dot = torch.einsum("kti,ic,ktc->k", u, logits, v)  # <L, cube_k>
    cube_sq_norm = (torch.einsum("kti,kui->ktu", u, u) * torch.einsum("ktc,kuc->ktu", v, v)).sum((-1, -2))
    return dot / cube_sq_norm.sqrt(), logits.pow(2).sum()


def residual_frac(coefficients: torch.Tensor, total: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|L - sum over the masked frequencies of L's projection| / |L| (the seed's "Residual fraction
    of norm"; over all frequencies, its `get_residual_cos_sim`). The cubes of distinct frequencies
    are orthogonal, so the residual's norm follows from the coefficients."""
    return (total - (coefficients.pow(2) * mask).sum()).clamp_min(0).sqrt() / total.sqrt()


def logit_periodicity(logits: torch.Tensor, mask: torch.Tensor, p: int,
                      sign: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine similarity of L with cos(w(a+b-c)) for every frequency [p//2] (the seed's
    `get_cos_sim`), and the residual fraction after the masked frequencies (sign=-1: with
    cos(w(a-b-c)), for modular subtraction)."""
    coefficients, total = logit_cos_coefficients(logits, p, sign)
    return coefficients / total.sqrt(), residual_frac(coefficients, total, mask)


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values: 0 when equal, near 1 when one dominates."""
    x = x.sort().values
    n = x.numel()
    ranks = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
    return ((2 * ranks - n - 1) * x).sum() / (n * x.sum())
