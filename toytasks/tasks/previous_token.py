"""Previous-token prediction, the no-position experiment (TransformerLens No_Position_Experiment).

A sequence is BOS (token 0) followed by n_ctx - 1 random tokens from 1..d_vocab-1; the target at
every position after the first is the token before it. Trained with positional embeddings zeroed
and frozen (`model.zero_pos_embed: true`), the model must find "the previous position" without
being told where anything is.

    d_vocab = 300, n_ctx = 6:   tokens  [0, 17, 254, 3, 99, 17]
                                targets [-100, 0, 17, 254, 3, 99]

Batches are drawn on the device from the generator they are given (the seed's generator drew
them on the CPU with the global RNG; same distribution, not the same numbers).
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .base import IGNORE, TokenSequenceTask, register


@register
@dataclasses.dataclass(frozen=True)
class PreviousToken(TokenSequenceTask):
    name = "previous_token"
    scored_positions = slice(1, None)

    vocab: int = 300
    """Vocabulary size, BOS (token 0) included."""
    length: int = 50
    """Sequence length, BOS included (the model's n_ctx)."""

    def __post_init__(self):
        super().__post_init__()
        if self.length < 2:
            raise ConfigError("length", f"must be at least 2, got {self.length}")

    @property
    def n_ctx(self) -> int:
        return self.length

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        tokens = torch.randint(1, self.vocab, (n, self.length), generator=generator, device=generator.device)
        tokens[:, 0] = 0  # BOS
        targets = torch.full_like(tokens, IGNORE)
        targets[:, 1:] = tokens[:, :-1]
        return {"tokens": tokens, "targets": targets}
