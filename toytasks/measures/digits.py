"""Per-digit loss of multi-digit addition: each digit of the sum has its own phase change
(Nanda and Lieberum), which the mean loss over digits blurs into a smooth curve.

On a fixed batch of sums (drawn once, from its own generator), at each measure step:

    val/loss/digit<i>   mean cross-entropy of the sum's digit with place value 10^i (digit0 the
                        units, digit<d> the final carry), in float64 as the training loss
    val/acc/digit<i>    its accuracy

digits.json records, for each digit, the step at which its accuracy first reaches 0.99
(`learnt_step`), and `toytasks plot` draws every digit's loss over training.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..phases import GROKKED, first_step_reaching
from . import Measure, MeasureOptions, register

MEASURE_SEED = 104_729  # added to the run's seed: the fixed evaluation batch


@dataclasses.dataclass(frozen=True)
class DigitsOptions(MeasureOptions):
    n_sums: int = 2048
    """Size of the fixed evaluation batch."""

    def __post_init__(self):
        super().__post_init__()
        if self.n_sums < 1:
            raise ConfigError("n_sums", f"must be at least 1, got {self.n_sums}")


@register
class DigitMeasures(Measure):
    """Loss and accuracy of each digit of the sum, on a fixed batch."""

    name = "digits"
    Options = DigitsOptions
    prefixes = ("val/loss/digit", "val/acc/digit")
    summary_file = "digits.json"

    @classmethod
    def why_not(cls, task, model_cfg):
        return None if task.name == "addition" else f"needs the addition task, not {task.name}"

    def __init__(self, options: DigitsOptions, config, dataset=None):
        super().__init__(options, config, dataset)
        batch = self.task.sample(options.n_sums, torch.Generator().manual_seed(config.seed + MEASURE_SEED))
        self.tokens, self.targets = batch["tokens"], batch["targets"]
        self.positions = self.task.answer_positions()  # digit<i> -> position

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.tokens.device != device:  # moved once, on first use there
            self.tokens, self.targets = self.tokens.to(device), self.targets.to(device)
        logits = model(self.tokens).double()  # [batch, pos, 10]
        values = {}
        for digit, position in self.positions.items():
            target = self.targets[:, position]
            values[f"val/loss/{digit}"] = F.cross_entropy(logits[:, position], target)
            values[f"val/acc/{digit}"] = (logits[:, position].argmax(-1) == target).double().mean()
        return values

    @classmethod
    def summary(cls, options, metrics) -> dict:
        digits = sorted((c.rsplit("/", 1)[1] for c in metrics.columns if c.startswith("val/acc/digit")),
                        key=lambda name: int(name[5:]))
        return {"threshold": GROKKED,
                "learnt_step": {d: first_step_reaching(metrics, f"val/acc/{d}") for d in digits}}

    @classmethod
    def figures(cls, run) -> dict:
        if "val/loss/digit0" not in run.metrics.columns:
            return {}
        return {"digit_loss.png": digit_loss_figure(run.metrics, cls.summary(None, run.metrics))}


def digit_loss_figure(metrics, summary: dict):
    """Each digit's test loss (log scale) and accuracy over training, the step at which each
    digit is learnt marked: one phase change per digit."""
    from ..plots import plt

    digits = list(summary["learnt_step"])
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    for digit in digits:
        rows = metrics.dropna(subset=[f"val/loss/{digit}"])
        line, = loss_ax.plot(rows["step"], rows[f"val/loss/{digit}"], label=digit)
        acc_ax.plot(rows["step"], rows[f"val/acc/{digit}"], label=digit, color=line.get_color())
        step = summary["learnt_step"][digit]
        if step is not None:
            for ax in (loss_ax, acc_ax):
                ax.axvline(step, linestyle="--", color=line.get_color(), alpha=0.5)
    if "val/loss" in metrics.columns:
        rows = metrics.dropna(subset=["val/loss"])
        loss_ax.plot(rows["step"], rows["val/loss"], color="black", linewidth=0.8, label="mean over digits")
    loss_ax.set(yscale="log", xlabel="step", ylabel="test loss", title="Loss of each digit of the sum")
    acc_ax.set(xlabel="step", ylabel="test accuracy", ylim=(-0.02, 1.02),
               title="Accuracy of each digit (dashed: first >= 0.99)")
    loss_ax.legend(fontsize=8, loc="lower left")
    acc_ax.legend(fontsize=8, loc="lower right")
    return fig
