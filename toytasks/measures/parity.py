"""Hidden progress on sparse parity (Barak et al. 2022): while the loss sits at chance, the model's
output already leans towards the hidden parity, and away from every other parity of k bits.

On a fixed batch of random inputs (drawn once, from its own generator), with f(x) the model's
logit of 1 minus its logit of 0 at the answer position, centred over the batch, and
chi_S(x) = +1 when the bits at S have odd parity and -1 when even:

    parity/corr_true        corr(S) = mean(f chi_S) / sqrt(mean(f^2)) for the hidden bits S:
                            the share of the output's spread that the true parity explains
                            (its normalised Fourier coefficient; 1 for a perfect solution)
    parity/corr_others_max  the largest |corr(S')| over `n_other_subsets` other k-subsets S'
                            (fixed): what chance alone gives on this batch
    parity/corr_others_rms  their root mean square
    parity/attn_hidden_max  the largest share of attention, over heads, that the answer
                            position puts on the k hidden bits (k / (n_bits + 1) when uniform)

parity.json records `signal_step`, the first measured step from which corr_true stays above
twice corr_others_max, and `drop_step`, the first step of test accuracy 0.99; `toytasks plot`
draws the loss with these correlations over training.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..phases import first_step_reaching
from . import Measure, MeasureOptions, register

MEASURE_SEED = 1_299_709  # added to the run's seed: the fixed evaluation batch and other subsets
ANSWER = -1  # the answer position


@dataclasses.dataclass(frozen=True)
class ParityOptions(MeasureOptions):
    n_inputs: int = 4096
    """Inputs in the fixed evaluation batch (chance correlations are about 1/sqrt(n_inputs))."""
    n_other_subsets: int = 64
    """Other k-subsets of the bits to compare with."""

    def __post_init__(self):
        super().__post_init__()
        for name in ("n_inputs", "n_other_subsets"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be at least 1, got {getattr(self, name)}")


@register
class ParityMeasures(Measure):
    """Correlation of the output with the hidden parity against other parities, and attention on the
    hidden bits."""

    name = "parity"
    Options = ParityOptions
    prefixes = ("parity/",)
    summary_file = "parity.json"

    @classmethod
    def why_not(cls, task, model_cfg):
        return None if task.name == "sparse_parity" else f"needs the sparse_parity task, not {task.name}"

    def __init__(self, options: ParityOptions, config, dataset=None):
        super().__init__(options, config, dataset)
        task = self.task
        generator = torch.Generator().manual_seed(config.seed + MEASURE_SEED)
        bits = torch.randint(0, 2, (options.n_inputs, task.n_bits), generator=generator)
        self.tokens = task.encode(bits)["tokens"]
        others = other_subsets(task.n_bits, task.k, task.hidden_bits, options.n_other_subsets, generator)
        subsets = [task.hidden_bits, *others]
        # [subsets, inputs]: +1 where the bits at the subset have odd parity, -1 where even
        self.chi = torch.stack([2.0 * task.parity(bits, s) - 1 for s in subsets]).double()
        self.hidden = list(task.hidden_bits)

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.tokens.device != device:  # moved once, on first use there
            self.tokens, self.chi = self.tokens.to(device), self.chi.to(device)
        logits, cache = model.run_with_cache(self.tokens, names_filter=lambda name: name.endswith("hook_pattern"))
        f = (logits[:, ANSWER, 1] - logits[:, ANSWER, 0]).double()
        f = f - f.mean()
        corr = self.chi @ f / len(f) / f.pow(2).mean().sqrt().clamp_min(1e-30)  # [subsets]
        others = corr[1:].abs()
        attention = torch.stack([cache["pattern", layer][:, :, ANSWER, self.hidden].sum(-1).mean(0)
                                 for layer in range(model.cfg.n_layers)])  # [layer, head]
        values = {"parity/corr_true": corr[0], "parity/attn_hidden_max": attention.max()}
        if len(others):
            values["parity/corr_others_max"] = others.max()
            values["parity/corr_others_rms"] = others.pow(2).mean().sqrt()
        return values

    @classmethod
    def summary(cls, options, metrics) -> dict:
        return {"signal_step": signal_step(metrics), "drop_step": first_step_reaching(metrics, "val/acc")}

    @classmethod
    def figures(cls, run) -> dict:
        if "parity/corr_true" not in run.metrics.columns:
            return {}
        return {"hidden_progress.png": hidden_progress(run.metrics, cls.summary(None, run.metrics))}


def other_subsets(n_bits: int, k: int, hidden, count: int, generator: torch.Generator) -> list[tuple[int, ...]]:
    """Up to `count` distinct k-subsets of the bits other than `hidden`, drawn at random."""
    from math import comb

    count = min(count, comb(n_bits, k) - 1)
    found: set[tuple[int, ...]] = set()
    while len(found) < count:
        subset = tuple(sorted(torch.randperm(n_bits, generator=generator)[:k].tolist()))
        if subset != tuple(hidden):
            found.add(subset)
    return sorted(found)


def signal_step(metrics) -> int | None:
    """The first measured step from which corr_true stays above twice corr_others_max (None if never)."""
    if "parity/corr_others_max" not in metrics.columns:
        return None
    rows = metrics.dropna(subset=["parity/corr_true", "parity/corr_others_max"])
    above = (rows["parity/corr_true"] > 2 * rows["parity/corr_others_max"]).to_numpy()
    if not len(above) or not above[-1]:
        return None
    below = (~above).nonzero()[0]
    return int(rows["step"].iloc[below[-1] + 1 if len(below) else 0])


def hidden_progress(metrics, summary: dict):
    """Left: test loss and accuracy, flat until the drop. Right: the hidden parity's correlation
    with the output rising through the plateau, against the other parities', and the attention on
    the hidden bits; the signal and drop steps marked."""
    from ..plots import phase_lines, plt

    marks = {"signal": summary.get("signal_step"), "drop": summary.get("drop_step")}
    fig, (loss_ax, corr_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    rows = metrics.dropna(subset=["val/loss"])
    loss_ax.plot(rows["step"], rows["val/loss"], label="test loss")
    loss_ax.plot(rows["step"], rows["val/acc"], label="test accuracy")
    loss_ax.set(xlabel="step", title="Loss: a plateau, then a sudden drop")
    for column, label in (("parity/corr_true", "corr with the hidden parity"),
                          ("parity/corr_others_max", "max |corr| with other parities"),
                          ("parity/corr_others_rms", "rms |corr| with other parities"),
                          ("parity/attn_hidden_max", "attention on the hidden bits (best head)")):
        if column in metrics.columns:
            part = metrics.dropna(subset=[column])
            corr_ax.plot(part["step"], part[column], label=label)
    corr_ax.set(xlabel="step", ylim=(-0.02, 1.02), title="Hidden progress during the plateau")
    for ax in (loss_ax, corr_ax):
        phase_lines(ax, marks)
        ax.legend(fontsize=8)
    return fig
