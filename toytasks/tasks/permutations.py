"""Composition in the symmetric group S_n: Power et al. 2022's permutation tasks and Chughtai et
al. 2023's group composition, in modular addition's token layout.

The n! permutations of 0..n-1, written as their images (x(0), ..., x(n-1)), are tokens 0..n!-1
in lexicographic order (token 0 is the identity; Power et al. order their S5 tokens so too);
token n! is `=`. Products apply the left factor first, as in Power et al.'s code (numpy's
`b[a]`, sympy's `a * b`): (xy)(i) = y(x(i)). Every pair (x, y) is one example; the model answers
at the last position:

    n = 3 (tokens: 0 = 012, 1 = 021, 2 = 102, 3 = 120, 4 = 201, 5 = 210),
    x = 1 (021), y = 3 (120):   y(x(0)) = y(0) = 1, y(x(1)) = y(2) = 0, y(x(2)) = y(1) = 2:
                                102 = token 2
                                tokens  [1, 3, 6]      targets [-100, -100, 2]

`op` picks the product (Power et al.'s three S5 tasks): `xy`, `xyx^-1` (conjugation) or `xyx`.
The (n!)^2 pairs are enumerated x major, y minor, and split by `torch.randperm` under `data_seed`
(the first `int(n_pairs * frac_train)` train), as modular addition is.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from functools import cached_property

import torch

from ..errors import ConfigError
from .base import IGNORE, Task, register

OPS = ("xy", "xyx^-1", "xyx")


@register
@dataclasses.dataclass(frozen=True)
class PermutationComposition(Task):
    name = "permutation_composition"
    scored_positions = slice(-1, None)
    headline = ("grokking step (test accuracy first >= 0.99)", "grokking_step")

    n: int = 5
    """The group is S_n (n! elements; S_5 has 120, S_4 24)."""
    op: str = "xy"
    """The product: xy, xyx^-1 or xyx."""
    frac_train: float = 0.4
    """Fraction of the (n!)^2 pairs in the training split."""
    data_seed: int = 598
    """Seed of the train/test split."""

    def __post_init__(self):
        if not 2 <= self.n <= 6:
            raise ConfigError("n", f"must be between 2 and 6 (S_6 has 518,400 pairs), got {self.n}")
        if self.op not in OPS:
            raise ConfigError("op", f"must be one of {', '.join(OPS)}, got {self.op!r}")
        if not 0 < self.frac_train < 1:
            raise ConfigError("frac_train", f"must be strictly between 0 and 1, got {self.frac_train}")
        if self.n_train == 0 or self.n_train == self.order ** 2:
            raise ConfigError("frac_train", f"leaves an empty split of the {self.order ** 2} pairs")

    @property
    def order(self) -> int:
        """The number of elements, n!."""
        return math.factorial(self.n)

    @property
    def d_vocab(self) -> int:
        return self.order + 1

    @property
    def d_vocab_out(self) -> int:
        return self.order

    @property
    def n_ctx(self) -> int:
        return 3

    @property
    def n_train(self) -> int:
        return int(self.order ** 2 * self.frac_train)

    @cached_property
    def elements(self) -> torch.Tensor:
        """[n!, n]: row t is the permutation of token t, as the images (x(0), ..., x(n-1))."""
        return torch.tensor(list(itertools.permutations(range(self.n))))

    def token_of(self, perms: torch.Tensor) -> torch.Tensor:
        """[..., n] permutations -> [...] their tokens (their lexicographic rank)."""
        rank = torch.zeros(perms.shape[:-1], dtype=torch.long)
        for i in range(self.n):  # Lehmer code: how many later images are smaller, times (n-1-i)!
            smaller = (perms[..., i + 1:] < perms[..., i:i + 1]).sum(-1)
            rank += smaller * math.factorial(self.n - 1 - i)
        return rank

    def compose(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Tokens x, y -> the token of the product `op` of x and y (the left factor acts first)."""
        px, py = self.elements[x], self.elements[y]  # [..., n] each
        xy = py.gather(-1, px)  # (xy)(i) = y(x(i))
        if self.op == "xyx^-1":
            xy = px.argsort(-1).gather(-1, xy)  # then x^-1
        elif self.op == "xyx":
            xy = px.gather(-1, xy)  # then x again
        return self.token_of(xy)

    def split_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (x * n! + y) of the train and test pairs."""
        order = torch.randperm(self.order ** 2, generator=torch.Generator().manual_seed(self.data_seed))
        return order[:self.n_train], order[self.n_train:]

    def make_dataset(self):
        from datasets import Dataset, DatasetDict

        x = torch.arange(self.order).repeat_interleave(self.order)  # [(n!)^2]
        y = torch.arange(self.order).repeat(self.order)
        label = self.compose(x, y)
        tokens = torch.stack([x, y, torch.full_like(x, self.order)], dim=1)  # [(n!)^2, 3]
        targets = torch.full_like(tokens, IGNORE)
        targets[:, -1] = label
        columns = dict(x=x, y=y, label=label, tokens=tokens, targets=targets)

        def split(indices: torch.Tensor):
            return Dataset.from_dict({k: v[indices].tolist() for k, v in columns.items()})

        train, test = self.split_indices()
        return DatasetDict(train=split(train), test=split(test))
