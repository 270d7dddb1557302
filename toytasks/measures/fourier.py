"""The grokking progress measures of modular addition (Nanda et al. 2023; the seed's Grokking_Demo).

From one forward pass over all p*p pairs (toytasks/fourier.py has the definitions). The seed's
measures, under the seed's names, with ONE fixed set of key frequencies: `key_freqs` when the
config gives them (e.g. the seed's [17, 25, 32, 47]), else the final model's, found when training
ends and applied to the whole saved series then (as the paper plots them):

    fourier/restricted_loss       test loss with the final-position MLP activations restricted to
                                  their mean and the key frequencies' cos/sin(w(a+b)) components
                                  (`get_restricted_loss`, with its bias correction)
    fourier/excluded_loss         train loss with those components removed (`get_excluded_loss`)
    fourier/logit_residual_frac   |logits - their key-frequency cos(w(a+b-c)) parts| / |logits|

At every measure step, the seed's measures that need no key frequencies:

    fourier/logit_cos_sim/k<k>             cosine similarity of the logits with cos(w_k(a+b-c))
                                           (`get_cos_sim`)
    fourier/logit_residual_frac_all_freqs  what all p//2 frequencies leave (`get_residual_cos_sim`)

and toytasks' own, which use each checkpoint's detected key frequencies (none at step 0):

    fourier/n_key_freqs, fourier/key_freq/k<k>, fourier/frac_neurons_key
    fourier/restricted_loss_live_freqs, fourier/excluded_loss_live_freqs,
    fourier/logit_residual_frac_live_freqs, fourier/embed_gini

phases.json holds the estimated phase boundaries (toytasks/phases.py) and the key frequencies.

The same definitions hold for modular subtraction (`modular_arithmetic` with `op: sub`) with a - b
in place of a + b; the other operations have no such key directions and are refused.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from .. import fourier as F
from ..errors import ConfigError
from ..phases import estimate_phases
from . import Measure, MeasureOptions, register

NEURON_HOOK = "blocks.0.mlp.hook_post"
RESID_MID_HOOK = "blocks.0.hook_resid_mid"


@dataclasses.dataclass(frozen=True)
class FourierOptions(MeasureOptions):
    threshold: float = 0.5
    """A neuron belongs to frequency k when k explains at least this fraction of its variance."""
    min_neuron_frac: float = 0.01
    """k is a key frequency when at least this fraction of all neurons belong to it."""
    key_freqs: Optional[list[int]] = None
    """The key frequencies of the seed's measures (the seed's run: [17, 25, 32, 47]); null: those
    the final model's neurons show, found when training ends."""

    def __post_init__(self):
        super().__post_init__()
        for i, k in enumerate(self.key_freqs or []):
            if k < 1:
                raise ConfigError(f"key_freqs[{i}]", f"must be a frequency from 1 to p//2, got {k}")
        if not 0 < self.threshold <= 1:
            raise ConfigError("threshold", f"must be in (0, 1], got {self.threshold}")
        if not 0 < self.min_neuron_frac <= 1:
            raise ConfigError("min_neuron_frac", f"must be in (0, 1], got {self.min_neuron_frac}")


@register
class FourierMeasure(Measure):
    """The measures of one modular-addition task, on all p*p pairs in (a, b) order."""

    name = "fourier"
    Options = FourierOptions
    prefixes = ("fourier/",)
    summary_file = "phases.json"

    @classmethod
    def why_not(cls, task, model_cfg):
        # The measures read one MLP layer's neurons and W_out W_U directly: the seed's architecture.
        # Their definitions hold for a +- b over all p*p pairs (the key directions are cos/sin(w(a+-b))).
        if _sign(task) is None:
            what = f"op {task.op}" if task.name == "modular_arithmetic" else task.name
            return f"applies to modular addition and subtraction (a + b, a - b mod p), not {what}"
        if task.p % 2 == 0:
            return f"needs an odd modulus (sin(p/2) vanishes), got p={task.p}"
        if model_cfg.n_layers != 1 or model_cfg.attn_only or model_cfg.normalization is not None:
            return ("needs a 1-layer model with an MLP and no normalization "
                    "(the logits must be (resid_mid + post @ W_out) @ W_U, as in the seed)")
        return None

    @classmethod
    def check_options(cls, options: FourierOptions, task) -> None:
        for i, k in enumerate(options.key_freqs or []):
            if k > task.p // 2:
                raise ConfigError(f"measures.fourier.key_freqs[{i}]", f"must be at most p//2 = {task.p // 2}, got {k}")

    def __init__(self, options: FourierOptions, config, dataset=None):
        super().__init__(options, config, dataset)
        p = self.p = self.task.p
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        self.tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # [p*p, 3]
        self.sign = _sign(self.task)  # +1: a + b; -1: a - b
        self.labels = (a + self.sign * b) % p
        self.train_idx, self.test_idx = self.task.split_indices()
        self.basis = F.fourier_basis(p)
        self.directions = F.sum_directions(p, sign=self.sign)
        self.fixed_mask = None  # [p//2] bool: the configured key frequencies
        if options.key_freqs:
            self.fixed_mask = torch.zeros(p // 2, dtype=torch.bool)
            self.fixed_mask[[k - 1 for k in options.key_freqs]] = True

    def _follow(self, model) -> None:
        """Keep the fixed data on the model's device (moved once, on first use there)."""
        device = model.W_E.device
        if self.tokens.device != device:
            for name in ("tokens", "labels", "train_idx", "test_idx", "basis", "directions", "fixed_mask"):
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def __call__(self, model, key_mask: torch.Tensor | None = None, live: bool = True) -> dict[str, torch.Tensor]:
        """Named 0-d tensors on the model's device, from one forward pass: the seed's measures with
        `key_mask` (by default the configured key frequencies, if any), and with `live` those of
        every checkpoint (the per-frequency ones, and the live-frequency variants)."""
        self._follow(model)
        key_mask = self.fixed_mask if key_mask is None else key_mask
        logits, cache = model.run_with_cache(self.tokens, names_filter=[NEURON_HOOK, RESID_MID_HOOK])
        parts = _Parts(logits[:, -1], cache[NEURON_HOOK][:, -1], cache[RESID_MID_HOOK][:, -1], model)
        coefficients, total = F.logit_cos_coefficients(parts.logits, self.p, self.sign)
        values = {}
        if key_mask is not None:
            values.update(self._with_freqs(parts, coefficients, total, key_mask, suffix=""))
        if not live:
            return values
        fractions = F.neuron_freq_fractions(parts.acts, self.p)  # [p//2, d_mlp]
        mask = self.key_mask(fractions)
        best_frac, best_freq = fractions.nan_to_num(0.0).max(dim=0)
        values.update(self._with_freqs(parts, coefficients, total, mask, suffix="_live_freqs"))
        values.update({
            "fourier/n_key_freqs": mask.sum(),
            "fourier/frac_neurons_key": ((best_frac >= self.options.threshold) & mask[best_freq]).float().mean(),
            "fourier/embed_gini": F.gini((self.basis @ model.W_E[:-1]).norm(dim=-1)),
            "fourier/logit_residual_frac_all_freqs": F.residual_frac(coefficients, total, torch.ones_like(mask)),
        })
        cos_sims = coefficients / total.sqrt()
        for k in range(1, self.p // 2 + 1):
            values[f"fourier/logit_cos_sim/k{k}"] = cos_sims[k - 1]
            values[f"fourier/key_freq/k{k}"] = mask[k - 1]
        return values

    def key_mask(self, fractions: torch.Tensor) -> torch.Tensor:
        return F.key_freq_mask(fractions, self.options.threshold, self.options.min_neuron_frac)

    @torch.no_grad()
    def final_key_mask(self, model) -> torch.Tensor:
        """The configured key frequencies, or those of `model` (the final one)."""
        self._follow(model)
        if self.fixed_mask is not None:
            return self.fixed_mask
        _, cache = model.run_with_cache(self.tokens, names_filter=[NEURON_HOOK])
        return self.key_mask(F.neuron_freq_fractions(cache[NEURON_HOOK][:, -1], self.p))

    def _with_freqs(self, parts: "_Parts", coefficients, total, mask, suffix: str) -> dict[str, torch.Tensor]:
        """The measures that depend on a set of key frequencies (a [p//2] mask)."""
        key = F.key_components(parts.acts, mask, self.directions)
        W_out, W_U = parts.model.blocks[0].mlp.W_out, parts.model.unembed.W_U
        # Restricted: keep the mean and the key components; the seed's bias correction.
        restricted_logits = (parts.acts.mean(dim=0) + key) @ W_out @ W_U
        restricted_logits = restricted_logits + parts.logits.mean(0, keepdim=True) - restricted_logits.mean(0, keepdim=True)
        # Excluded: remove the key components, keep the rest of the residual stream. The seed
        # leaves out the biases (frozen at zero in its model); with them the logits are the model's.
        resid = (parts.acts - key) @ W_out + parts.model.blocks[0].mlp.b_out + parts.resid_mid
        excluded_logits = resid @ W_U + parts.model.unembed.b_U
        return {
            f"fourier/restricted_loss{suffix}": F.cross_entropy64(restricted_logits[self.test_idx], self.labels[self.test_idx]),
            f"fourier/excluded_loss{suffix}": F.cross_entropy64(excluded_logits[self.train_idx], self.labels[self.train_idx]),
            f"fourier/logit_residual_frac{suffix}": F.residual_frac(coefficients, total, mask),
        }

    # --- over the series ---------------------------------------------------------------------------
    def after_training(self, model_at: Callable, steps: list[int], final_model) -> dict[int, dict]:
        """The seed's measures at every saved step, with the final model's key frequencies (with
        configured ones, they were logged during training)."""
        if self.fixed_mask is not None:
            return {}
        mask = self.final_key_mask(final_model)
        return {step: {k: v.item() for k, v in self(model_at(step), key_mask=mask, live=False).items()}
                for step in steps}

    def measure_series(self, model_at: Callable, steps: list[int]) -> dict[int, dict]:
        # One load and one forward pass per checkpoint: the seed's and the live values together.
        mask = self.final_key_mask(model_at(steps[-1]))
        return {step: {k: v.item() for k, v in self(model_at(step), key_mask=mask).items()} for step in steps}

    @classmethod
    def summary(cls, options, metrics) -> dict:
        """The phases, and the key frequencies the seed's measures used."""
        last = metrics.dropna(subset=["fourier/n_key_freqs"]) if "fourier/n_key_freqs" in metrics else metrics.iloc[:0]
        detected = sorted(int(c.rsplit("k", 1)[1]) for c in metrics.columns
                          if c.startswith("fourier/key_freq/k") and len(last) and last[c].iloc[-1] > 0)
        return {**estimate_phases(metrics), "key_freqs": options.key_freqs or detected}
    # --- figures -----------------------------------------------------------------------------------
    @classmethod
    def figures(cls, run) -> dict:
        figures = {}
        phases = estimate_phases(run.metrics)
        if "fourier/restricted_loss" in run.metrics.columns or "fourier/restricted_loss_live_freqs" in run.metrics:
            figures["restricted_excluded_loss.png"] = restricted_excluded(run.metrics, phases)
        if run.steps:
            figures["embed_fourier_norms.png"] = embedding_fourier_norms(run)
        return figures


def _sign(task) -> int | None:
    """+1 for modular addition, -1 for subtraction, None where the measures do not apply."""
    if task.name == "modular_addition":
        return 1
    if task.name == "modular_arithmetic":
        return {"add": 1, "sub": -1}.get(task.op)
    return None


def restricted_excluded(metrics, phase_steps: dict):
    """The seed's "Excluded and Restricted Loss Curve" (log y), with the phase boundaries."""
    from ..plots import phase_lines, plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for column, label in (("train/loss", "train"), ("val/loss", "test")):
        rows = metrics.dropna(subset=[column])
        ax.plot(rows["step"], rows[column], label=label, linewidth=1.2)
    for column, label, style in (
        ("fourier/excluded_loss", "excluded", "-"),
        ("fourier/restricted_loss", "restricted", "-"),
        ("fourier/excluded_loss_live_freqs", "excluded (each step's own key freqs)", ":"),
        ("fourier/restricted_loss_live_freqs", "restricted (each step's own key freqs)", ":"),
    ):
        if column in metrics.columns:
            rows = metrics.dropna(subset=[column])
            ax.plot(rows["step"], rows[column], style, label=label, linewidth=1.5)
    ax.set(yscale="log", xlabel="step", ylabel="loss", title="Excluded and Restricted Loss Curve")
    phase_lines(ax, phase_steps)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def embedding_fourier_norms(run, step: int | None = None):
    """Norms of W_E (without the `=` token) in the Fourier basis (at the last step unless given),
    sin and cos per k: the seed's "Norm of embedding of each Fourier Component"."""
    from ..plots import plt

    p, step = run.task.p, run.steps[-1] if step is None else step
    with torch.no_grad():
        norms = (F.fourier_basis(p) @ run.model_at(step).W_E[:-1]).norm(dim=-1)
    k = torch.arange(1, p // 2 + 1).numpy()
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(k - 0.2, norms[1::2].numpy(), width=0.4, label="sin")
    ax.bar(k + 0.2, norms[2::2].numpy(), width=0.4, label="cos")
    ax.set(xlabel="frequency k", ylabel="norm", title=f"Norm of the embedding in the Fourier basis (step {step})")
    ax.legend()
    return fig


@dataclasses.dataclass
class _Parts:
    """What one forward pass gives the measures, at the final position."""

    logits: torch.Tensor  # [p*p, p]
    acts: torch.Tensor  # [p*p, d_mlp]: the MLP neurons
    resid_mid: torch.Tensor  # [p*p, d_model]
    model: object
