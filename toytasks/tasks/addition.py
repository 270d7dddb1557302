"""Multi-digit addition (Nanda and Lieberum's phase-change experiment): two d-digit numbers and
their sum, one token per digit, with endless fresh data. Each digit of the sum is learnt in its
own sudden phase change (toytasks/measures/digits.py logs the loss of each).

Digits are tokens 0..9, `+` is 10 and `=` 11. Numbers are written most significant digit first,
zero-padded to d digits, the sum to d + 1. The model reads `a + b =` and writes the sum one digit
at a time (teacher-forced), so the target at `=` is the sum's first digit and the target at each
sum digit is the next one; only the sum's digits are scored:

    d = 3, 457 + 968 = 1425:   tokens  [4, 5, 7, 10, 9, 6, 8, 11, 1, 4, 2]
                               targets [-100, -100, -100, -100, -100, -100, -100, 1, 4, 2, 5]

(n_ctx = 3d + 2: the last digit of the sum is a target, never an input.) The answer digit with
place value 10^i is `digit<i>`: digit0 the units, digit<d> the final carry.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .base import IGNORE, Task, register

PLUS, EQUALS = 10, 11


@register
@dataclasses.dataclass(frozen=True)
class Addition(Task):
    name = "addition"
    finite = False
    headline = ("step test accuracy first >= 0.99", "grokking_step")

    n_digits: int = 5
    """Digits of each summand, d (the sum has d + 1)."""

    def __post_init__(self):
        if not 1 <= self.n_digits <= 18:
            raise ConfigError("n_digits", f"must be between 1 and 18 (int64 sums), got {self.n_digits}")

    @property
    def scored_positions(self) -> slice:
        return slice(2 * self.n_digits + 1, None)  # from `=` on

    @property
    def d_vocab(self) -> int:
        return 12

    @property
    def d_vocab_out(self) -> int:
        return 10

    @property
    def n_ctx(self) -> int:
        return 3 * self.n_digits + 2

    def digits(self, numbers: torch.Tensor, width: int) -> torch.Tensor:
        """[...] numbers -> [..., width] their digits, most significant first."""
        powers = 10 ** torch.arange(width - 1, -1, -1, device=numbers.device)
        return numbers[..., None] // powers % 10

    def answer_positions(self) -> dict[str, int]:
        """`digit<i>` -> the position whose target is the sum's digit with place value 10^i."""
        d = self.n_digits
        return {f"digit{i}": 2 * d + 1 + (d - i) for i in range(d + 1)}

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        device, d = generator.device, self.n_digits
        a, b = torch.randint(0, 10 ** d, (2, n), generator=generator, device=device)
        total = self.digits(a + b, d + 1)  # [n, d + 1]
        column = lambda value: torch.full((n, 1), value, device=device)  # noqa: E731
        tokens = torch.cat([self.digits(a, d), column(PLUS), self.digits(b, d), column(EQUALS), total[:, :-1]], dim=1)
        targets = torch.full_like(tokens, IGNORE)
        targets[:, 2 * d + 1:] = total
        return {"tokens": tokens, "targets": targets}
