"""Induction: random tokens in which a segment repeats, so its copy is predictable.

A sequence of n_ctx = 2 * half + 1 tokens is BOS (token 0) and random tokens from 1..vocab-1, in
which k tokens copy the tokens d positions before them. Per sequence, the distance d is drawn from
2..n_ctx-3, the length k from 2..min(half, what fits), and where the copied segment starts is
random; with k > d the copy repeats itself with period d. The model predicts the next token at
every position. Only an induction circuit (a previous-token head composing with an induction
head: two layers) predicts the copy:

    vocab = 100, half = 5, d = 3, k = 3, segment at 2:
        tokens  [0, 61, 18, 42, 7, 18, 42, 7, 93, 12, 55]
        targets [61, 18, 42, 7, 18, 42, 7, 93, 12, 55, -100]
    d = 2, k = 4:  [0, 61, 18, 42, 18, 42, 18, 42, 93, 12, 55]

Every distance is about as common as another, short ones included, so that no position or offset
can stand in for the tokens' content. We saw three such stand-ins: with a fixed k, a 1-layer model
copies from k positions back; with the copies always at 1..k and k+1..2k, a 2-layer model reads
the first copy through layer-0 heads that attend about halfway back; with most distances near
`half`, the layer-0 heads average over a band of positions about that far back instead of
becoming previous-token heads, and the induction heads, keyed on that blur, stay soft (about 0.6).

Groups reported separately (`val/loss/<group>` by the head measures): `repeated`, the positions
predicting the second to k-th token of the copy; `first`, those predicting first occurrences
(everything else scored, but the position predicting the copy's first token: nothing has repeated
yet there).
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
        last = self.n_ctx - 1  # tokens after BOS
        rand = lambda high: (torch.rand(n, 1, generator=generator, device=device) * high).long()  # [n, 1] in [0, high)
        d = 2 + rand(last - 3)  # [n, 1] distance from a token to its copy: 2..n_ctx-3
        k = 2 + rand((last - d).clamp(max=self.half) - 1)  # [n, 1] tokens copied: 2..min(half, room left)
        start = 1 + rand(last - d - k + 1)  # [n, 1] where the copied segment starts (after a random prefix)
        tokens = torch.randint(1, self.vocab, (n, self.n_ctx), generator=generator, device=device)
        tokens[:, 0] = 0  # BOS
        pos = torch.arange(self.n_ctx, device=device)  # [pos]
        copy = (pos >= start + d) & (pos < start + d + k)  # [n, pos]
        source = start + (pos - start).remainder(d)  # [n, pos] when k > d, the copy repeats with period d
        tokens = torch.where(copy, tokens.gather(1, source.clamp(max=self.n_ctx - 1)), tokens)
        targets = torch.full_like(tokens, IGNORE)
        targets[:, :-1] = tokens[:, 1:]
        return {"tokens": tokens, "targets": targets,
                "repeat_len": k[:, 0], "repeat_start": (start + d)[:, 0], "repeat_dist": d[:, 0]}

    def position_groups(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Boolean masks [batch, pos] of the positions whose losses are reported apart."""
        k, start = batch["repeat_len"][:, None], batch["repeat_start"][:, None]
        pos = torch.arange(self.n_ctx, device=k.device)
        scored = batch["targets"] != IGNORE
        repeated = (pos >= start) & (pos < start + k - 1)
        first = scored & ~repeated & (pos != start - 1)
        return {"first": first, "repeated": repeated}
