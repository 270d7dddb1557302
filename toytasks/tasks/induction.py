"""Induction: random tokens in which a segment repeats, so its second copy is predictable.

A sequence of n_ctx = 2 * half + 1 tokens is BOS (token 0), k random tokens from 1..vocab-1, the
same k tokens again, then fresh random tokens to the end; k is drawn per sequence from
2..half. The model predicts the next token at every position. Only an induction circuit (a
previous-token head composing with an induction head: two layers) predicts the second copy. The
repeat length varies so that no fixed positional offset can stand in for it (with a fixed k,
even a 1-layer model learns to copy from k positions back):

    vocab = 100, half = 4, k = 3:   tokens  [0, 42, 7, 93, 42, 7, 93, 55, 12]
                                    targets [42, 7, 93, 42, 7, 93, 55, 12, -100]

Groups reported separately (`val/loss/<group>` by the head measures): `repeated`, the positions
predicting the second to k-th repeated token; `first`, those predicting first occurrences (the
first copy and the fresh tokens after the repeat). The position predicting the first repeated
token belongs to neither: nothing has repeated yet.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .base import IGNORE, TokenSequenceTask, register


@register
@dataclasses.dataclass(frozen=True)
class Induction(TokenSequenceTask):
    name = "induction"
    scored_positions = slice(0, -1)
    headline = ("final best induction score", "final/heads/induction_max")

    half: int = 20
    """Longest repeated segment; n_ctx = 2 * half + 1."""

    def __post_init__(self):
        super().__post_init__()
        if self.half < 2:
            raise ConfigError("half", f"must be at least 2, got {self.half}")

    @property
    def n_ctx(self) -> int:
        return 2 * self.half + 1

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        device = generator.device
        k = torch.randint(2, self.half + 1, (n, 1), generator=generator, device=device)  # repeat length
        tokens = torch.randint(1, self.vocab, (n, self.n_ctx), generator=generator, device=device)
        tokens[:, 0] = 0  # BOS
        pos = torch.arange(self.n_ctx, device=device)  # [pos]
        second_copy = (pos > k) & (pos <= 2 * k)  # [n, pos]
        copied = tokens.gather(1, (pos - k).clamp(min=0))  # the token k positions back
        tokens = torch.where(second_copy, copied, tokens)
        targets = torch.full_like(tokens, IGNORE)
        targets[:, :-1] = tokens[:, 1:]
        return {"tokens": tokens, "targets": targets, "repeat_len": k[:, 0]}

    def position_groups(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Boolean masks [batch, pos] of the positions whose losses are reported apart."""
        k = batch["repeat_len"][:, None]
        pos = torch.arange(self.n_ctx, device=k.device)
        scored = batch["targets"] != IGNORE
        repeated = (pos > k) & (pos < 2 * k)
        first = ((pos < k) | (pos >= 2 * k)) & scored
        return {"first": first, "repeated": repeated}
