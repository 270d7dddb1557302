"""Induction: distinct random tokens, the last of which copy earlier ones, so the copy is predictable.

A sequence of n_ctx = 2 * half + 1 tokens is BOS (token 0) and distinct random tokens from
1..vocab-1 (so vocab >= n_ctx), the last k of which copy the tokens d positions before them. Per
sequence, the distance d is drawn from 2..n_ctx-3 and where the copied segment starts from what
fits (at least 2 tokens copied); the copy runs to the end, and with k > d it repeats itself with
period d. The model predicts the next token at every position. Only an induction circuit (a
previous-token head composing with an induction head: two layers) predicts the copy:

    vocab = 100, half = 5, d = 3, segment at 3 (k = 5):
        tokens  [0, 61, 93, 18, 42, 7, 18, 42, 7, 18, 42]
        targets [61, 93, 18, 42, 7, 18, 42, 7, 18, 42, -100]
    d = 6, segment at 2 (k = 3):  [0, 61, 18, 42, 7, 93, 12, 55, 18, 42, 7]

Every distance is about as common as another, short ones included, so that no position or offset
can stand in for the tokens' content. We saw three such stand-ins: with a fixed k, a 1-layer model
copies from k positions back; with the copies always at 1..k and k+1..2k, a 2-layer model reads
the first copy through layer-0 heads that attend about halfway back; with most distances near
`half`, the layer-0 heads average over a band of positions about that far back instead of
becoming previous-token heads, and the induction heads, keyed on that blur, stay soft (about 0.6).

Every repeated token is followed by the copy of its successor, as in the seeds' sequences (ARENA
1.2: random tokens from a vocabulary of 50,000, then the same again), so an induction head can be
sure of its prediction. Two things broke that, each capping the models' confidence at about 80%
(the loss on repeats stayed near 0.3 however long they trained): coincidental repeats, with
tokens drawn with replacement from a small vocabulary (with 200 tokens and half = 10, one in six
tokens seen before was a coincidence), and copies that stopped at a random length before the end
(the token after the copy's last one is fresh).

Groups reported separately (`val/loss/<group>` by the head measures): `repeated`, the positions
predicting the second to last token of the copy; `first`, those predicting first occurrences
(everything else scored, but the position predicting the copy's first token: nothing has repeated
yet there).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import IGNORE, TokenSequenceTask, register


@register
@dataclasses.dataclass(frozen=True)
class Induction(TokenSequenceTask):
    name = "induction"
    scored_positions = slice(0, -1)
    headline = ("final best induction score", "final/heads/induction_max")

    half: int = 20
    """n_ctx = 2 * half + 1 (the name from the seeds' sequences: a segment, then the same again)."""

    def __post_init__(self):
        super().__post_init__()
        if self.half < 2:
            raise ConfigError("half", f"must be at least 2, got {self.half}")
        if self.vocab < self.n_ctx:
            raise ConfigError("vocab", f"must be at least n_ctx = 2 * half + 1 = {self.n_ctx} (the tokens of a "
                                       f"sequence are distinct but for the copy), got {self.vocab}")

    @property
    def n_ctx(self) -> int:
        return 2 * self.half + 1

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        device = generator.device
        last = self.n_ctx - 1  # tokens after BOS
        rand = lambda high: (torch.rand(n, 1, generator=generator, device=device) * high).long()  # [n, 1] in [0, high)
        d = 2 + rand(last - 3)  # [n, 1] distance from a token to its copy: 2..n_ctx-3
        start = 1 + rand(last - d - 1)  # [n, 1] where the copied segment starts: 1..n_ctx-d-2
        k = last - d - start + 1  # [n, 1] tokens copied (2 or more): the copy runs to the end
        # Distinct tokens (a random permutation's first n_ctx - 1), so that the copy is the only
        # repeat: a coincidental one would make "my token occurred before" a weaker cue.
        order = torch.rand(n, self.vocab - 1, generator=generator, device=device).argsort(dim=1)
        tokens = F.pad(1 + order[:, :last], (1, 0))  # BOS (0), then the tokens
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
