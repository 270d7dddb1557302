"""Where a bracket classifier fails: accuracy and logit difference by group of test strings.

On the whole stored test split, at each measure step:

    brackets/acc/<group>         share classified correctly
    brackets/logit_diff/<group>  mean of logit(balanced) - logit(unbalanced): positive on
                                 balanced strings and negative on the others once learnt

The groups: `all`, each kind (`balanced`, `total`, `negative`, `both`), `near_miss` (the
unbalanced strings one step from balanced), four length buckets (`len_02-10`, ...) and buckets
of the maximum nesting depth (`depth_0-1`, `depth_2-3`, ..., `depth_8+`).
"""
from __future__ import annotations

import numpy as np
import torch

from . import Measure, MeasureOptions, register

DEPTH_EDGES = (0, 2, 4, 6, 8)  # bucket i holds depths in [edge_i, edge_i+1); the last is open


def length_buckets(max_length: int, n: int = 4) -> list[tuple[int, int]]:
    """`n` contiguous ranges of the even lengths 2..max_length, as (shortest, longest)."""
    chunks = np.array_split(np.arange(2, max_length + 1, 2), min(n, max_length // 2))
    return [(int(c[0]), int(c[-1])) for c in chunks]


def group_masks(split, max_length: int) -> dict[str, torch.Tensor]:
    """Boolean masks over the rows of a stored split, one per group (empty groups left out)."""
    kind = np.array(list(split["kind"]))
    length, depth = np.array(list(split["length"])), np.array(list(split["depth"]))
    masks = {"all": np.ones(len(kind), dtype=bool)}
    for name in ("balanced", "total", "negative", "both"):
        masks[name] = kind == name
    masks["near_miss"] = np.array(list(split["near_miss"]), dtype=bool)
    width = len(str(max_length))
    for lo, hi in length_buckets(max_length):
        masks[f"len_{lo:0{width}d}-{hi:0{width}d}"] = (length >= lo) & (length <= hi)
    for lo, hi in zip(DEPTH_EDGES, DEPTH_EDGES[1:] + (None,)):
        name = f"depth_{lo}+" if hi is None else f"depth_{lo}-{hi - 1}"
        masks[name] = (depth >= lo) & (depth < (hi or np.inf))
    return {name: torch.from_numpy(mask) for name, mask in masks.items() if mask.any()}


@register
class BracketMeasures(Measure):
    """Accuracy and logit difference per group, on the stored test split."""

    name = "brackets"
    Options = MeasureOptions
    prefixes = ("brackets/",)

    @classmethod
    def why_not(cls, task, model_cfg):
        return None if task.name == "brackets" else f"needs the brackets task, not {task.name}"

    def __init__(self, options, config, dataset=None):
        super().__init__(options, config, dataset)
        split = dataset["test"]
        columns = split.with_format("torch", columns=["tokens", "attention_mask", "label"])[:]
        self.tokens = columns["tokens"]  # [batch, n_ctx]
        self.attention_mask = columns["attention_mask"]  # [batch, n_ctx]
        self.label = columns["label"]  # [batch]
        self.masks = group_masks(split, self.task.max_length)

    @torch.no_grad()
    def __call__(self, model) -> dict[str, torch.Tensor]:
        device = model.W_E.device
        if self.tokens.device != device:  # moved once, on first use there
            for name in ("tokens", "attention_mask", "label"):
                setattr(self, name, getattr(self, name).to(device))
            self.masks = {k: v.to(device) for k, v in self.masks.items()}
        logits = model(self.tokens, attention_mask=self.attention_mask)[:, 0]  # [batch, 2]
        correct = (logits.argmax(-1) == self.label).double()
        diff = (logits[:, 1] - logits[:, 0]).double()  # balanced minus unbalanced
        values = {}
        for name, mask in self.masks.items():
            values[f"brackets/acc/{name}"] = correct[mask].mean()
            values[f"brackets/logit_diff/{name}"] = diff[mask].mean()
        return values

    @classmethod
    def figures(cls, run) -> dict:
        if "brackets/acc/all" not in run.metrics.columns:
            return {}
        return {"brackets_accuracy.png": accuracy_figure(run.metrics)}


def accuracy_figure(metrics):
    """Test error (1 - accuracy) of a bracket classifier over training, by kind, length and depth.
    The error, on a log-like scale: past 99% accuracy the differences between groups are in it."""
    from ..plots import plt

    panels = (("kind", ("all", "balanced", "total", "negative", "both", "near_miss")),
              ("length", sorted(c[13:] for c in metrics.columns if c.startswith("brackets/acc/len_"))),
              ("nesting depth", sorted((c[13:] for c in metrics.columns if c.startswith("brackets/acc/depth_")),
                                       key=lambda g: int(g[6:].split("-")[0].rstrip("+")))))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for ax, (title, groups) in zip(axes, panels):
        for group in groups:
            column = f"brackets/acc/{group}"
            if column in metrics.columns:
                rows = metrics.dropna(subset=[column])
                ax.plot(rows["step"], 1 - rows[column], marker=".", label=group.replace("_", " "))
        ax.set(xlabel="step", title=f"Test error by {title}", ylim=(0, 1.05))
        ax.set_yscale("symlog", linthresh=1e-3)  # zero error stays on the plot
        ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("1 - accuracy")
    return fig
