"""Binary operations mod p: Power et al. 2022's grokking tasks, in modular addition's token layout.

Every pair (a, b) the operation is defined on is one example of three tokens, `=` being token p;
the model answers at the last position:

    p = 97, op = div, a = 5, b = 3:   tokens  [5, 3, 97]      targets [-100, -100, 34]
                                      (5 * 3^-1 = 5 * 65 = 325 = 34 mod 97)

`op` is one of (Power et al., Table 1, plus `mul`):

    add  a + b          sub  a - b          mul  a * b          div  a * b^-1, b != 0
    div_if_odd_else_sub  a * b^-1 when b is odd, else a - b
    x^2+y^2    x^2+xy+y^2    x^2+xy+y^2+x    x^3+xy    x^3+xy^2+y

all mod p; `div` and `div_if_odd_else_sub` need a prime p (b^-1 = b^(p-2)). The pairs are
enumerated as modular addition enumerates them (a major, b minor; `div` leaves out b = 0) and
split by `torch.randperm` of their number under `data_seed`, so `op: add` gives exactly the data
and split of `modular_addition` (the seed's).
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .base import IGNORE, register
from .modular_addition import ModularAddition


def _inverse(b: torch.Tensor, p: int) -> torch.Tensor:
    """b^-1 mod a prime p, by Fermat (b^(p-2)); 0 stays 0."""
    result, base, exponent = torch.ones_like(b), b % p, p - 2
    while exponent:
        if exponent & 1:
            result = result * base % p
        base, exponent = base * base % p, exponent >> 1
    return result


OPS = {  # name: (a, b, p) -> a value reduced mod p by the caller
    "add": lambda a, b, p: a + b,
    "sub": lambda a, b, p: a - b,
    "mul": lambda a, b, p: a * b,
    "div": lambda a, b, p: a * _inverse(b, p),
    "div_if_odd_else_sub": lambda a, b, p: torch.where(b % 2 == 1, a * _inverse(b, p), a - b),
    "x^2+y^2": lambda a, b, p: a * a + b * b,
    "x^2+xy+y^2": lambda a, b, p: a * a + a * b + b * b,
    "x^2+xy+y^2+x": lambda a, b, p: a * a + a * b + b * b + a,
    "x^3+xy": lambda a, b, p: a * a * a + a * b,
    "x^3+xy^2+y": lambda a, b, p: a * a * a + a * b * b + b,
}
NEEDS_PRIME = ("div", "div_if_odd_else_sub")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


@register
@dataclasses.dataclass(frozen=True)
class ModularArithmetic(ModularAddition):
    name = "modular_arithmetic"

    p: int = 97
    """The modulus (Power et al. use 97); the vocabulary is 0..p-1 plus `=` (token p)."""
    op: str = "add"
    """The operation: add, sub, mul, div, div_if_odd_else_sub, x^2+y^2, x^2+xy+y^2, x^2+xy+y^2+x,
    x^3+xy or x^3+xy^2+y (all mod p)."""

    def __post_init__(self):
        if self.op not in OPS:
            raise ConfigError("op", f"must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.op in NEEDS_PRIME and not _is_prime(self.p):
            raise ConfigError("p", f"op {self.op} needs a prime modulus (for b^-1), got {self.p}")
        super().__post_init__()

    @property
    def n_pairs(self) -> int:
        return self.p * (self.p - 1) if self.op == "div" else self.p * self.p

    @property
    def n_train(self) -> int:
        return int(self.n_pairs * self.frac_train)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (a, b) of the task, [n_pairs] each, a major and b minor."""
        a = torch.arange(self.p).repeat_interleave(self.p)
        b = torch.arange(self.p).repeat(self.p)
        if self.op == "div":
            a, b = a[b != 0], b[b != 0]
        return a, b

    def label(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return OPS[self.op](a, b, self.p) % self.p

    def split_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices into `pairs()` of the train and test examples."""
        generator = torch.Generator().manual_seed(self.data_seed)
        order = torch.randperm(self.n_pairs, generator=generator)
        return order[:self.n_train], order[self.n_train:]

    def make_dataset(self):
        from datasets import Dataset, DatasetDict

        a, b = self.pairs()
        label = self.label(a, b)
        tokens = torch.stack([a, b, torch.full_like(a, self.p)], dim=1)  # [n_pairs, 3]
        targets = torch.full_like(tokens, IGNORE)
        targets[:, -1] = label
        columns = dict(a=a, b=b, label=label, tokens=tokens, targets=targets)

        def split(indices: torch.Tensor):
            return Dataset.from_dict({k: v[indices].tolist() for k, v in columns.items()})

        train, test = self.split_indices()
        return DatasetDict(train=split(train), test=split(test))
