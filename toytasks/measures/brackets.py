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

import dataclasses

import numpy as np
import torch

from ..errors import ConfigError
from . import MeasureConfig

DEPTH_EDGES = (0, 2, 4, 6, 8)  # bucket i holds depths in [edge_i, edge_i+1); the last is open


@dataclasses.dataclass(frozen=True)
class BracketsConfig(MeasureConfig):
    pass


def check_applies(task, model_cfg) -> None:
    if task.name != "brackets":
        raise ConfigError("measures.brackets", f"needs the brackets task, not {task.name}")


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


class BracketMeasures:
    """Accuracy and logit difference per group, on a stored test split."""

    def __init__(self, task, split):
        self.task = task
        columns = split.with_format("torch", columns=["tokens", "attention_mask", "label"])[:]
        self.tokens = columns["tokens"]  # [batch, n_ctx]
        self.attention_mask = columns["attention_mask"]  # [batch, n_ctx]
        self.label = columns["label"]  # [batch]
        self.masks = group_masks(split, task.max_length)

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
