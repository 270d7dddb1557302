"""Modular addition, the grokking task (Nanda et al. 2023; the TransformerLens Grokking_Demo).

Every pair (a, b) with 0 <= a, b < p is one example, written as three tokens; the token p is `=`.
The model answers at the last position, where the target is (a + b) mod p:

    p = 113, a = 5, b = 110:   tokens  [5, 110, 113]      targets [-100, -100, 2]

The p*p pairs are enumerated in the seed's order (a major, b minor) and split by
`torch.randperm(p * p)` under `data_seed`: the first `int(p * p * frac_train)` permuted pairs train,
the rest test. That is the seed notebook's split exactly (its `torch.manual_seed(DATA_SEED)` then
`torch.randperm`), so `data_seed: 598` gives the notebook's own train set.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .base import IGNORE, Task, register


@register
@dataclasses.dataclass(frozen=True)
class ModularAddition(Task):
    name = "modular_addition"
    scored_positions = slice(-1, None)
    headline = ("grokking step (test accuracy first >= 0.99)", "grokking_step")

    p: int = 113
    """The modulus; the vocabulary is 0..p-1 plus `=` (token p)."""
    frac_train: float = 0.3
    """Fraction of the p*p pairs in the training split."""
    data_seed: int = 598
    """Seed of the train/test split (598 is the seed notebook's DATA_SEED)."""

    def __post_init__(self):
        if self.p < 2:
            raise ConfigError("p", f"must be at least 2, got {self.p}")
        if not 0 < self.frac_train < 1:
            raise ConfigError("frac_train", f"must be strictly between 0 and 1, got {self.frac_train}")
        if self.n_train == 0 or self.n_train == self.p * self.p:
            raise ConfigError("frac_train", f"leaves an empty split of the {self.p * self.p} pairs")

    @property
    def d_vocab(self) -> int:
        return self.p + 1

    @property
    def d_vocab_out(self) -> int:
        return self.p

    @property
    def n_ctx(self) -> int:
        return 3

    @property
    def n_train(self) -> int:
        return int(self.p * self.p * self.frac_train)

    @property
    def n_examples(self) -> int:
        return self.p * self.p

    def split_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (a * p + b) of the train and test pairs, in the seed's order."""
        generator = torch.Generator().manual_seed(self.data_seed)
        order = torch.randperm(self.p * self.p, generator=generator)
        return order[:self.n_train], order[self.n_train:]

    def make_dataset(self):
        from datasets import Dataset, DatasetDict

        a = torch.arange(self.p).repeat_interleave(self.p)  # [p*p] 0,0,..,1,1,..
        b = torch.arange(self.p).repeat(self.p)  # [p*p] 0,1,..,0,1,..
        label = (a + b) % self.p
        tokens = torch.stack([a, b, torch.full_like(a, self.p)], dim=1)  # [p*p, 3]
        targets = torch.full_like(tokens, IGNORE)
        targets[:, -1] = label
        columns = dict(a=a, b=b, label=label, tokens=tokens, targets=targets)

        def split(indices: torch.Tensor):
            return Dataset.from_dict({k: v[indices].tolist() for k, v in columns.items()})

        train, test = self.split_indices()
        return DatasetDict(train=split(train), test=split(test))
