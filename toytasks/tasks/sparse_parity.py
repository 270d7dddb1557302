"""Sparse parity (Barak et al. 2022, "Hidden progress in deep learning"): n random bits, and the
label is the parity of k of them, fixed and hidden. Trained from scratch, a model sits on a long
plateau at chance, then its loss drops suddenly, while a measure of hidden progress
(toytasks/measures/parity.py) rises steadily during the plateau.

The bits are tokens 0 and 1, followed by `=` (token 2), where the model answers 0 or 1:

    n_bits = 6, k = 2, subset_seed = 0 (hidden bits 2 and 5):
        bits     1 0 1 1 1 0
        tokens   [1, 0, 1, 1, 1, 0, 2]
        targets  [-100, -100, -100, -100, -100, -100, 1]      (bits 2 and 5 are 1 and 0: parity 1)

Barak et al. write the inputs as +-1 and the label as their product; a bit b here is (-1)^b there,
so the labels agree. The hidden bits are drawn once from `subset_seed` (`task.hidden_bits`).
The data are endless by default (each batch fresh, as in the paper's online setting); with
`n_examples` they are a finite set of distinct strings, split by `frac_train`.
"""
from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Optional

import torch

from ..errors import ConfigError
from .base import IGNORE, Task, register

EQUALS = 2


@register
@dataclasses.dataclass(frozen=True)
class SparseParity(Task):
    name = "sparse_parity"
    scored_positions = slice(-1, None)
    headline = ("step of the drop (test accuracy first >= 0.99)", "grokking_step")

    n_bits: int = 20
    """Input bits, n."""
    k: int = 3
    """Bits in the hidden parity."""
    subset_seed: int = 0
    """Seed that picks the k hidden bits."""
    n_examples: Optional[int] = None
    """null: endless data, fresh each batch; else a finite set of this many distinct strings."""
    frac_train: float = 0.5
    """With n_examples: the fraction of them in the training split."""
    data_seed: int = 598
    """With n_examples: the seed that draws the strings and splits them."""

    def __post_init__(self):
        if not 1 <= self.k <= self.n_bits:
            raise ConfigError("k", f"must be between 1 and n_bits={self.n_bits}, got {self.k}")
        if self.n_examples is None:
            return
        if self.n_bits > 62:
            raise ConfigError("n_bits", f"a finite set (n_examples) needs at most 62 bits, got {self.n_bits}")
        if not 2 <= self.n_examples <= 2 ** self.n_bits:
            raise ConfigError("n_examples", f"must be between 2 and 2^n_bits={2 ** self.n_bits}, got {self.n_examples}")
        if not 0 < self.frac_train < 1:
            raise ConfigError("frac_train", f"must be strictly between 0 and 1, got {self.frac_train}")
        if self.n_train == 0 or self.n_train == self.n_examples:
            raise ConfigError("frac_train", f"leaves an empty split of the {self.n_examples} examples")

    @property
    def finite(self) -> bool:
        return self.n_examples is not None

    @property
    def d_vocab(self) -> int:
        return 3

    @property
    def d_vocab_out(self) -> int:
        return 2

    @property
    def n_ctx(self) -> int:
        return self.n_bits + 1

    @property
    def n_train(self) -> int:
        if self.n_examples is None:
            raise NotImplementedError(f"{self.name} without n_examples is a sampled task")
        return int(self.n_examples * self.frac_train)

    @cached_property
    def hidden_bits(self) -> tuple[int, ...]:
        """The k bit positions whose parity is the label, sorted."""
        order = torch.randperm(self.n_bits, generator=torch.Generator().manual_seed(self.subset_seed))
        return tuple(sorted(order[:self.k].tolist()))

    def parity(self, bits: torch.Tensor, subset=None) -> torch.Tensor:
        """[..., n_bits] bits -> [...] the parity of those at `subset` (default: the hidden bits)."""
        subset = self.hidden_bits if subset is None else subset
        return bits[..., list(subset)].sum(-1) % 2

    def encode(self, bits: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = torch.cat([bits, torch.full_like(bits[:, :1], EQUALS)], dim=1)  # [batch, n_bits + 1]
        targets = torch.full_like(tokens, IGNORE)
        targets[:, -1] = self.parity(bits)
        return {"tokens": tokens, "targets": targets}

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.finite:
            raise NotImplementedError(f"{self.name} with n_examples is a finite task")
        return self.encode(torch.randint(0, 2, (n, self.n_bits), generator=generator, device=generator.device))

    def make_dataset(self):
        if not self.finite:
            raise NotImplementedError(f"{self.name} without n_examples is a sampled task")
        from datasets import Dataset, DatasetDict

        generator = torch.Generator().manual_seed(self.data_seed)
        codes = torch.empty(0, dtype=torch.long)
        while len(codes) < self.n_examples:  # distinct strings, as integers (redraw the repeats)
            draw = torch.randint(0, 2 ** self.n_bits, (self.n_examples - len(codes),), generator=generator)
            codes = torch.cat([codes, draw]).unique()
        codes = codes[torch.randperm(len(codes), generator=generator)]  # unique() sorted them
        bits = (codes[:, None] >> torch.arange(self.n_bits)) & 1  # [n_examples, n_bits]
        columns = self.encode(bits)

        def split(part: slice):
            return Dataset.from_dict({k: v[part].tolist() for k, v in columns.items()})

        return DatasetDict(train=split(slice(None, self.n_train)), test=split(slice(self.n_train, None)))
