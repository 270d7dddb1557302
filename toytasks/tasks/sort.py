"""Sorting (or reversing) a sequence, trained on short sequences and evaluated also on longer ones:
length generalisation. toytasks/measures/lengths.py logs the accuracy at each evaluated length.

A sequence of n values (tokens 0..vocab-1, drawn with replacement) is followed by SEP (token
vocab) and the answer, written one token at a time (teacher-forced): the target at SEP is the
answer's first token, the target at each answer token the next. The rest is PAD (token vocab+1),
never scored and never seen by a scored position (attention is causal):

    vocab = 10, op = sort, n = 4, max_eval_len = 6:
        tokens  [3, 9, 1, 3, 10, 1, 3, 3, 11, 11, 11, 11]
        targets [-100, -100, -100, -100, 1, 3, 3, 9, -100, -100, -100, -100]

Training draws n uniformly from min_len..max_train_len; the model's context is sized for
max_eval_len (n_ctx = 2 * max_eval_len), so that longer sequences can be evaluated. The test
loss and accuracy (`val/`) are on the training lengths; longer ones are the lengths measure's.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from .base import IGNORE, Task, register

OPS = ("sort", "reverse")


@register
@dataclasses.dataclass(frozen=True)
class Sort(Task):
    name = "sort"
    finite = False
    headline = ("final test accuracy (training lengths)", "final/val/acc")

    op: str = "sort"
    """sort (ascending) or reverse."""
    vocab: int = 10
    """Number of distinct values (tokens 0..vocab-1); SEP and PAD come after."""
    min_len: int = 1
    """Shortest sequence trained on."""
    max_train_len: int = 10
    """Longest sequence trained on."""
    max_eval_len: int = 20
    """Longest sequence evaluated on (sizes the model's context)."""

    def __post_init__(self):
        if self.op not in OPS:
            raise ConfigError("op", f"must be one of {', '.join(OPS)}, got {self.op!r}")
        if self.vocab < 2:
            raise ConfigError("vocab", f"must be at least 2, got {self.vocab}")
        if not 1 <= self.min_len <= self.max_train_len:
            raise ConfigError("min_len", f"must be between 1 and max_train_len={self.max_train_len}, got {self.min_len}")
        if self.max_eval_len < self.max_train_len:
            raise ConfigError("max_eval_len", f"must be at least max_train_len={self.max_train_len}, got {self.max_eval_len}")

    @property
    def sep(self) -> int:
        return self.vocab

    @property
    def pad(self) -> int:
        return self.vocab + 1

    @property
    def d_vocab(self) -> int:
        return self.vocab + 2

    @property
    def d_vocab_out(self) -> int:
        return self.vocab

    @property
    def n_ctx(self) -> int:
        return 2 * self.max_eval_len

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        lengths = torch.randint(self.min_len, self.max_train_len + 1, (n,), generator=generator, device=generator.device)
        return self.with_lengths(lengths, generator)

    def with_lengths(self, lengths: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Sequences of the given lengths [batch] (each at most max_eval_len), values drawn from `generator`."""
        n, width, device = len(lengths), self.max_eval_len, generator.device
        values = torch.randint(0, self.vocab, (n, width), generator=generator, device=device)
        length = lengths[:, None].to(device)  # [batch, 1]
        index = torch.arange(width, device=device)  # [width]
        values = torch.where(index < length, values, self.vocab)  # past the end: above every value
        if self.op == "sort":
            answer = values.sort(dim=1).values  # the padding sorts last
        else:
            answer = values.gather(1, (length - 1 - index).clamp(min=0))
        pos = torch.arange(self.n_ctx, device=device)  # [n_ctx]
        read = lambda x, i: x.gather(1, i.clamp(0, width - 1).expand(n, -1))  # noqa: E731  x[:, i] where valid
        tokens = torch.where(pos < length, read(values, pos[None]),
                             torch.where(pos == length, self.sep,
                                         torch.where(pos < 2 * length, read(answer, pos[None] - length - 1), self.pad)))
        targets = torch.where((pos >= length) & (pos < 2 * length), read(answer, pos[None] - length), IGNORE)
        return {"tokens": tokens, "targets": targets, "length": lengths.to(device)}
