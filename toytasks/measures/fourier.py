"""Grokking progress measures for modular addition (Nanda et al. 2023; the seed's Grokking_Demo).

Every definition follows the seed notebook ("Analyse Neurons", "Black Box Methods + Progress
Measures"), vectorised over neurons and frequencies and kept on the model's device:

- the Fourier basis over 0..p-1: constant, then sin k and cos k for k = 1..p//2, each row
  normalised;
- each neuron's fraction of variance explained by frequency k (its 2-D Fourier transform over
  (a, b) with the constant term removed; the 3x3 block {const, sin k, cos k}^2); key frequencies
  are those that explain at least `threshold` of the variance of enough neurons;
- restricted loss (test split): the final-position MLP activations keep only their mean and
  their cos(w(a+b)), sin(w(a+b)) components at the key frequencies, go through W_out W_U, and the
  logits get the seed's bias correction (plus the mean original logit minus the mean new logit);
- excluded loss (train split): those components are removed from the activations, the rest of
  the residual stream (resid_mid) is kept;
- logit periodicity: the cosine similarity of the logit cube L[a, b, c] with cos(w(a+b-c)) for
  every frequency, and the residual fraction |L - sum over key k of its projections| / |L|;
- the Gini coefficient of the norms of W_E in the Fourier basis (sparsity of the embedding).

Key frequencies are held as a boolean mask over 1..p//2, so nothing here needs their number on
the host: no device sync until the values are logged.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import ConfigError
from . import MeasureConfig

NEURON_HOOK = "blocks.0.mlp.hook_post"
RESID_MID_HOOK = "blocks.0.hook_resid_mid"


@dataclasses.dataclass(frozen=True)
class FourierConfig(MeasureConfig):
    threshold: float = 0.5
    """A neuron belongs to frequency k when k explains at least this fraction of its variance."""
    min_neuron_frac: float = 0.01
    """k is a key frequency when at least this fraction of all neurons belong to it."""

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.threshold <= 1:
            raise ConfigError("threshold", f"must be in (0, 1], got {self.threshold}")
        if not 0 < self.min_neuron_frac <= 1:
            raise ConfigError("min_neuron_frac", f"must be in (0, 1], got {self.min_neuron_frac}")


def check_applies(task, model_cfg) -> None:
    """The measures read one MLP layer's neurons and W_out W_U directly: the seed's architecture."""
    if task.name != "modular_addition":
        raise ConfigError("measures.fourier", f"applies to modular_addition, not {task.name}")
    if task.p % 2 == 0:
        raise ConfigError("measures.fourier", f"needs an odd modulus (sin(p/2) vanishes), got p={task.p}")
    if model_cfg.n_layers != 1 or model_cfg.attn_only or model_cfg.normalization is not None:
        raise ConfigError("measures.fourier", "needs a 1-layer model with an MLP and no normalization "
                          "(the logits must be (resid_mid + post @ W_out) @ W_U, as in the seed)")


# --- the pieces, each a pure function of tensors ------------------------------------------------

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


def sum_directions(p: int, device=None) -> torch.Tensor:
    """[p//2, 2, p*p]: cos(w(a+b)) and sin(w(a+b)) over the (a, b) grid, each normalised."""
    s = (torch.arange(p, device=device)[:, None] + torch.arange(p, device=device)[None, :]).flatten()
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


def logit_periodicity(logits: torch.Tensor, mask: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of the logit cube L[a, b, c] with cos(w(a+b-c)) for every frequency
    [p//2], and the residual fraction |L - sum over key k of its projection| / |L| (the seed's
    "Logit Periodicity" cells).

    cos(w(a+b-c)) = cos(w(a+b)) cos(wc) + sin(w(a+b)) sin(wc), so the projections are computed
    without building the seed's [p//2, p, p, p] cube. logits: [p*p, p], rows in (a, b) order.
    """
    logits = logits.to(torch.float64)
    x = torch.arange(p, device=logits.device, dtype=torch.float64)
    w = 2 * torch.pi / p * torch.arange(1, p // 2 + 1, device=logits.device, dtype=torch.float64)[:, None]
    s = (x[:, None] + x[None, :]).flatten()  # a + b, [p*p]
    u = torch.stack([torch.cos(w * s), torch.sin(w * s)], dim=1)  # [p//2, 2, p*p]
    v = torch.stack([torch.cos(w * x), torch.sin(w * x)], dim=1)  # [p//2, 2, p]
    dot = torch.einsum("kti,ic,ktc->k", u, logits, v)  # <L, cube_k>
    cube_sq_norm = (torch.einsum("kti,kui->ktu", u, u) * torch.einsum("ktc,kuc->ktu", v, v)).sum((-1, -2))
    coefficients = dot / cube_sq_norm.sqrt()  # projections onto the normalised cubes
    total = logits.pow(2).sum()
    # The cubes of distinct frequencies are orthogonal, so the residual norm follows directly.
    residual = (total - (coefficients.pow(2) * mask).sum()).clamp_min(0).sqrt()
    return coefficients / total.sqrt(), residual / total.sqrt()


def gini(x: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of non-negative values: 0 when equal, near 1 when one dominates."""
    x = x.sort().values
    n = x.numel()
    ranks = torch.arange(1, n + 1, device=x.device, dtype=x.dtype)
    return ((2 * ranks - n - 1) * x).sum() / (n * x.sum())


# --- the measure: fixed evaluation data plus one forward pass ------------------------------------

class FourierMeasures:
    """The measures of one modular-addition task, on all p*p pairs in (a, b) order."""

    def __init__(self, task, cfg: FourierConfig):
        p = self.p = task.p
        self.cfg = cfg
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        self.tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # [p*p, 3]
        self.labels = (a + b) % p
        self.train_idx, self.test_idx = task.split_indices()
        self.basis = fourier_basis(p)
        self.directions = sum_directions(p)

    def _follow(self, model) -> None:
        """Keep the fixed data on the model's device (moved once, on first use there)."""
        device = model.W_E.device
        if self.tokens.device != device:
            for name in ("tokens", "labels", "train_idx", "test_idx", "basis", "directions"):
                setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def __call__(self, model, final_mask: torch.Tensor | None = None, live: bool = True) -> dict[str, torch.Tensor]:
        """Named 0-d tensors on the model's device, from one forward pass: the live measures (key
        frequencies of this model), and with `final_mask` also the losses restricted to / excluding
        those frequencies (the `_final_freqs` measures)."""
        self._follow(model)
        logits, cache = model.run_with_cache(self.tokens, names_filter=[NEURON_HOOK, RESID_MID_HOOK])
        logits = logits[:, -1]  # [p*p, p]
        acts = cache[NEURON_HOOK][:, -1]  # [p*p, d_mlp]
        resid_mid = cache[RESID_MID_HOOK][:, -1]  # [p*p, d_model]
        W_out, W_U = model.blocks[0].mlp.W_out, model.unembed.W_U
        values = {}
        if final_mask is not None:
            restricted, excluded = self._losses(logits, acts, resid_mid, W_out, W_U, final_mask)
            values["fourier/restricted_loss_final_freqs"] = restricted
            values["fourier/excluded_loss_final_freqs"] = excluded
        if not live:
            return values

        fractions = neuron_freq_fractions(acts, self.p)  # [p//2, d_mlp]
        mask = self.key_mask(fractions)
        restricted, excluded = self._losses(logits, acts, resid_mid, W_out, W_U, mask)
        cos_sims, residual_frac = logit_periodicity(logits, mask, self.p)
        best_frac, best_freq = fractions.nan_to_num(0.0).max(dim=0)
        values.update({
            "fourier/restricted_loss": restricted,
            "fourier/excluded_loss": excluded,
            "fourier/n_key_freqs": mask.sum(),
            "fourier/frac_neurons_key": ((best_frac >= self.cfg.threshold) & mask[best_freq]).float().mean(),
            "fourier/embed_gini": gini((self.basis @ model.W_E[:-1]).norm(dim=-1)),
            "fourier/logit_residual_frac": residual_frac,
        })
        for k in range(1, self.p // 2 + 1):
            values[f"fourier/logit_cos_sim/k{k}"] = cos_sims[k - 1]
            values[f"fourier/key_freq/k{k}"] = mask[k - 1]
        return values

    def key_mask(self, fractions: torch.Tensor) -> torch.Tensor:
        return key_freq_mask(fractions, self.cfg.threshold, self.cfg.min_neuron_frac)

    @torch.no_grad()
    def final_key_mask(self, model) -> torch.Tensor:
        self._follow(model)
        _, cache = model.run_with_cache(self.tokens, names_filter=[NEURON_HOOK])
        return self.key_mask(neuron_freq_fractions(cache[NEURON_HOOK][:, -1], self.p))

    def _losses(self, logits, acts, resid_mid, W_out, W_U, mask):
        key = key_components(acts, mask, self.directions)
        # Restricted: keep the mean and the key components; the seed's bias correction.
        restricted_logits = (acts.mean(dim=0) + key) @ W_out @ W_U
        restricted_logits = restricted_logits + logits.mean(0, keepdim=True) - restricted_logits.mean(0, keepdim=True)
        restricted = cross_entropy64(restricted_logits[self.test_idx], self.labels[self.test_idx])
        # Excluded: remove the key components, keep the rest of the residual stream.
        excluded_logits = ((acts - key) @ W_out + resid_mid) @ W_U
        excluded = cross_entropy64(excluded_logits[self.train_idx], self.labels[self.train_idx])
        return restricted, excluded
