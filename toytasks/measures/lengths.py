"""Accuracy at each sequence length, of sorting or reversal: length generalisation.

On a fixed batch with `n_per_length` sequences of every length from 1 to the task's max_eval_len
(drawn once, from its own generator), at each measure step:

    val/acc/len<n>        accuracy over the answer tokens of the length-n sequences (the
                          definition of `val/acc`, restricted to them)
    val/exact/len<n>      the share of length-n sequences whose whole answer is right

lengths.json records the final accuracy at each length and the longest length up to which every
length's exact-match share is at least 0.99 (`longest_solved`); `toytasks plot` draws accuracy
against length over training, the training lengths shaded.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..phases import GROKKED
from ..tasks import IGNORE
from . import Measure, MeasureOptions, register

MEASURE_SEED = 15_485_863  # added to the run's seed: the fixed evaluation batch


@dataclasses.dataclass(frozen=True)
class LengthsOptions(MeasureOptions):
    n_per_length: int = 64
    """Sequences of each length in the fixed evaluation batch."""

    def __post_init__(self):
        super().__post_init__()
        if self.n_per_length < 1:
            raise ConfigError("n_per_length", f"must be at least 1, got {self.n_per_length}")


@register
class LengthMeasures(Measure):
    """Accuracy and exact-match share at each length, on a fixed batch of every length."""

    name = "lengths"
    Options = LengthsOptions
    prefixes = ("val/acc/len", "val/exact/len")
    summary_file = "lengths.json"

    @classmethod
    def why_not(cls, task, model_cfg):
        return None if task.name == "sort" else f"needs the sort task, not {task.name}"

    def __init__(self, options: LengthsOptions, config, dataset=None):
        super().__init__(options, config, dataset)
        self.lengths = list(range(1, self.task.max_eval_len + 1))
        each = torch.tensor(self.lengths).repeat_interleave(options.n_per_length)  # [batch]
        batch = self.task.with_lengths(each, torch.Generator().manual_seed(config.seed + MEASURE_SEED))
        self.tokens, self.targets, self.length = batch["tokens"], batch["targets"], batch["length"]

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.tokens.device != device:  # moved once, on first use there
            self.tokens, self.targets, self.length = (t.to(device) for t in (self.tokens, self.targets, self.length))
        logits = model(self.tokens)  # [batch, pos, vocab]
        scored = self.targets != IGNORE  # [batch, pos]
        correct = (logits.argmax(-1) == self.targets) & scored
        per_sequence = scored.sum(1)  # = its length
        values = {}
        for n in self.lengths:
            rows = self.length == n
            values[f"val/acc/len{n}"] = correct[rows].sum() / scored[rows].sum()
            values[f"val/exact/len{n}"] = (correct[rows].sum(1) == per_sequence[rows]).double().mean()
        return values

    @classmethod
    def summary(cls, options, metrics) -> dict:
        lengths = _lengths(metrics)
        if not lengths:
            return {}
        final = {kind: {n: float(metrics[f"val/{kind}/len{n}"].dropna().iloc[-1]) for n in lengths}
                 for kind in ("acc", "exact")}
        longest = 0  # the longest n such that every length up to n is solved
        while longest < lengths[-1] and final["exact"].get(longest + 1, 0.0) >= GROKKED:
            longest += 1
        return {"final_acc": {f"len{n}": v for n, v in final["acc"].items()},
                "final_exact": {f"len{n}": v for n, v in final["exact"].items()}, "longest_solved": longest}

    @classmethod
    def figures(cls, run) -> dict:
        if not _lengths(run.metrics):
            return {}
        return {"accuracy_by_length.png": accuracy_by_length(run.metrics, run.task.max_train_len)}


def _lengths(metrics) -> list[int]:
    return sorted(int(c[len("val/acc/len"):]) for c in metrics.columns if c.startswith("val/acc/len"))


def accuracy_by_length(metrics, max_train_len: int):
    """Left: accuracy against sequence length at a few steps of training (the training lengths
    shaded). Right: the same as a heatmap, length against step."""
    import numpy as np

    from ..plots import plt

    lengths = _lengths(metrics)
    columns = [f"val/acc/len{n}" for n in lengths]
    rows = metrics.dropna(subset=columns)
    fig, (lines_ax, map_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    picks = rows.iloc[sorted({round(i * (len(rows) - 1) / 5) for i in range(6)})]
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(picks)))
    for colour, (_, row) in zip(colours, picks.iterrows()):
        lines_ax.plot(lengths, row[columns].to_numpy(dtype=float), marker=".", color=colour,
                      label=f"step {int(row['step'])}")
    lines_ax.axvspan(0.5, max_train_len + 0.5, color="grey", alpha=0.12, label="trained lengths")
    lines_ax.set(xlabel="sequence length", ylabel="test accuracy (answer tokens)", ylim=(-0.02, 1.02),
                 title="Accuracy by length over training")
    lines_ax.legend(fontsize=8)
    image = map_ax.imshow(rows[columns].to_numpy(dtype=float).T, aspect="auto", origin="lower", vmin=0, vmax=1,
                          cmap="viridis", interpolation="nearest",
                          extent=(rows["step"].iloc[0], rows["step"].iloc[-1], lengths[0] - 0.5, lengths[-1] + 0.5))
    map_ax.axhline(max_train_len + 0.5, color="white", linestyle="--", linewidth=1)
    map_ax.set(xlabel="step", ylabel="sequence length", title="Accuracy (dashed: longest trained length)")
    fig.colorbar(image, ax=map_ax)
    return fig
