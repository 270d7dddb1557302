"""Balanced brackets: classify a string of `(` and `)` as balanced or not (ARENA 1.5.1).

Tokens as in the seed: [start]=0, [pad]=1, [end]=2, `(`=3, `)`=4. A sequence is [start], the
brackets, [end], then [pad] up to n_ctx = max_length + 2. A bidirectional model reads its answer
at position 0 (class 0 = unbalanced, 1 = balanced, the seed's W_U order); padding is masked in
attention (`attention_mask`), so nothing stored in padded positions can reach the answer.

    max_length = 6, "(())":   tokens          [0, 3, 3, 4, 4, 2, 1, 1]
                              attention_mask  [1, 1, 1, 1, 1, 1, 0, 0]
                              targets         [1, -100, -100, -100, -100, -100, -100, -100]

The failure kinds are the seed's, read the way its model reads a string: right to left (ARENA's
`is_balanced_vectorized_return_both`). The elevation at a position is the count of `)` minus the
count of `(` from there to the end (the seed's "elevation for each suffix seq[i:]"). A string is
balanced when its elevation never drops below zero and is zero for the whole string; otherwise:
  total     more `)` than `(`, never below zero        `))`, `)())`   seed: "just total elevation failure"
  negative  as many `(` as `)`, below zero somewhere   `)(`, `())(`   seed: "just neg failure"
  both      both; every string with more `(` than `)`  `((`, `(()(`   seed: "both failures"
            is here (its elevation ends below zero)
With as many `(` as `)`, the elevation at a position equals the left-to-right count of `(` minus
`)` before it, so `balanced` and `negative` are the same read either way; `total` and `both` are
not (read left to right, `(()(` would be a total failure and `))` both). A near-miss is one step
from balanced: `total` ending at 2, `negative` dropping only to -1 (a `)(` put into a balanced
string where its elevation is zero), `both` ending at +-2.

The data: only even lengths (odd lengths would give the answer away), half balanced by default,
the unbalanced split evenly over the three kinds and, within each kind, half near-misses. Within
each such group, lengths are spread evenly over 2, 4, ..., max_length and each string is drawn
uniformly among the group's strings of its length (exact path counting), so long and deep
strings are as common as short ones. Short lengths hold few distinct strings (there are 14
balanced strings of length 8): those lengths take all of them and the rest of their share goes
to longer lengths. Every string is distinct, so no string is in both train and test.
"""
from __future__ import annotations

import dataclasses
import functools
from functools import cached_property

import numpy as np
import torch

from ..errors import ConfigError, ToytasksError
from .base import IGNORE, Task, register

START, PAD, END, OPEN, CLOSE = range(5)
CHAR_TOKENS = {"(": OPEN, ")": CLOSE}
UNBALANCED, BALANCED = 0, 1
KINDS = ("balanced", "total", "negative", "both")


# --- the reference checker (plain Python, independent of the generator) -----------------------
def failure_kind(string: str) -> str:
    """`balanced`, `total`, `negative` or `both`, read right to left (see the module docstring)."""
    elevation, dipped = 0, False
    for char in reversed(string):
        elevation += 1 if char == ")" else -1
        dipped |= elevation < 0
    if not dipped:
        return "balanced" if elevation == 0 else "total"
    return "negative" if elevation == 0 else "both"


def is_balanced(string: str) -> bool:
    return failure_kind(string) == "balanced"


# --- groups of strings, as conditions on the final elevation and the lowest elevation --------
# A path is the elevation read as the kinds are (right to left, `)` up); its last value is the
# elevation of the whole string. The lowest elevation is tracked as a state: 0 = never below
# zero, 1 = lowest is -1, 2 = lower.
GROUPS = {  # name: (kind, near_miss, accepts(final, low_state))
    "balanced": ("balanced", False, lambda h, m: (h == 0) & (m == 0)),
    "total/near": ("total", True, lambda h, m: (h == 2) & (m == 0)),
    "total/far": ("total", False, lambda h, m: (h >= 4) & (m == 0)),
    "negative/near": ("negative", True, lambda h, m: (h == 0) & (m == 1)),
    "negative/far": ("negative", False, lambda h, m: (h == 0) & (m == 2)),
    "both/near": ("both", True, lambda h, m: (np.abs(h) == 2) & (m > 0)),
    "both/far": ("both", False, lambda h, m: (np.abs(h) >= 4) & (m > 0)),
}


class PathCounter:
    """Counts, for strings of length n, the completions that end in a group; samples uniformly.

    counts[i, h + n, m] = number of ways to write the last n - i brackets, from elevation h and
    low state m after i brackets, so that the whole string is in the group. A string drawn one
    bracket at a time with P(`(`) = counts(after `(`) / counts(now) is uniform over the group.
    """

    def __init__(self, n: int, accepts):
        self.n = n
        heights = np.arange(-n, n + 1)
        self.counts = np.zeros((n + 1, 2 * n + 1, 3))
        for m in range(3):
            self.counts[n, :, m] = accepts(heights, m)
        for i in range(n - 1, -1, -1):
            for m in range(3):
                for step in (1, -1):
                    h2 = np.clip(heights + step, -n, n)
                    self.counts[i, :, m] += self.counts[i + 1, h2 + n, _low_state(h2, m)]

    @property
    def total(self) -> int:
        return int(self.counts[0, self.n, 0])

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` paths as steps [count, n] of +1 and -1, uniform over the group (`_to_strings`)."""
        h, m = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
        steps = np.empty((count, self.n), dtype=np.int8)
        for i in range(self.n):
            up = h + 1
            p_open = self.counts[i + 1, up + self.n, _low_state(up, m)] / self.counts[i, h + self.n, m]
            step = np.where(rng.random(count) < p_open, 1, -1)
            steps[:, i] = step
            h = h + step
            m = _low_state(h, m)
        return steps


def _low_state(h, m):
    return np.maximum(m, np.where(h >= 0, 0, np.where(h == -1, 1, 2)))


def _to_strings(steps: np.ndarray) -> list[str]:
    """The strings of paths [count, n]: a path is read right to left and goes up on a `)`."""
    chars = np.where(steps[:, ::-1] > 0, ord(")"), ord("(")).astype(np.uint8)
    return [row.tobytes().decode() for row in chars]


def _spread(total: int, capacities: list[int]) -> list[int]:
    """Split `total` as evenly as possible over bins that hold at most `capacities` each."""
    counts = [0] * len(capacities)
    left, open_bins = total, sorted(range(len(capacities)), key=lambda i: capacities[i])
    while open_bins:
        share, extra = divmod(left, len(open_bins))
        i = open_bins.pop(0)
        counts[i] = min(capacities[i], share + (1 if extra else 0))
        left -= counts[i]
    return counts


@register
@dataclasses.dataclass(frozen=True)
class Brackets(Task):
    name = "brackets"
    scored_positions = slice(0, 1)
    headline = ("final test accuracy", "final/val/acc")

    max_length: int = 40
    """Longest bracket string (even); n_ctx = max_length + 2."""
    size: int = 100_000
    """Examples in all (the seed's data file holds 100,000)."""
    frac_train: float = 0.9
    """Share of each group of strings in the train split; the rest is the test split."""
    balanced_frac: float = 0.5
    """Share of balanced strings; the unbalanced rest is split evenly over the three kinds."""
    near_miss_frac: float = 0.5
    """Share of near-misses within each failure kind."""
    data_seed: int = 0
    """Seed of the generator and the split."""

    def __post_init__(self):
        if self.max_length < 2 or self.max_length % 2:
            raise ConfigError("max_length", f"must be even and at least 2, got {self.max_length}")
        if not 0 < self.frac_train < 1:
            raise ConfigError("frac_train", f"must be strictly between 0 and 1, got {self.frac_train}")
        for name in ("balanced_frac", "near_miss_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(name, f"must be between 0 and 1, got {getattr(self, name)}")
        smallest = min((n for n in self.group_sizes.values() if n), default=0)
        if smallest < 2 or self.n_train < 1 or self.size - self.n_train < 1 or any(
                min(a, b) < 1 for a, b in self._splits.values() if a + b):
            raise ConfigError("size", f"{self.size} examples are too few for a train and a test split "
                                      f"holding every group of strings (smallest group: {smallest})")
        for group, wanted in self.group_sizes.items():
            available = sum(c.total for c in self.counters(group))
            if wanted > available:
                raise ConfigError("size", f"{self.size} examples need {wanted} distinct {group} strings, "
                                          f"but strings of up to {self.max_length} brackets hold {available}")

    @property
    def d_vocab(self) -> int:
        return 5

    @property
    def d_vocab_out(self) -> int:
        return 2

    @property
    def n_ctx(self) -> int:
        return self.max_length + 2

    @property
    def lengths(self) -> list[int]:
        return list(range(2, self.max_length + 1, 2))

    @cached_property
    def group_sizes(self) -> dict[str, int]:
        n_balanced = round(self.size * self.balanced_frac)
        kinds = _spread(self.size - n_balanced, [self.size] * 3)  # total, negative, both
        sizes = {"balanced": n_balanced}
        for kind, n in zip(KINDS[1:], kinds):
            sizes[f"{kind}/near"] = round(n * self.near_miss_frac)
            sizes[f"{kind}/far"] = n - sizes[f"{kind}/near"]
        return sizes

    @cached_property
    def _splits(self) -> dict[str, tuple[int, int]]:
        return {g: (round(n * self.frac_train), n - round(n * self.frac_train)) for g, n in self.group_sizes.items()}

    @property
    def n_train(self) -> int:
        return sum(train for train, _ in self._splits.values())

    @property
    def n_examples(self) -> int:
        return self.size

    def counters(self, group: str) -> list[PathCounter]:
        accepts = GROUPS[group][2]
        return [_counter(n, accepts) for n in self.lengths]

    # --- tokens ---------------------------------------------------------------------------------
    def tokenize(self, strings: list[str] | str) -> dict[str, torch.Tensor]:
        """`tokens` and `attention_mask` [batch, n_ctx] of bracket strings (padded to n_ctx)."""
        strings = [strings] if isinstance(strings, str) else list(strings)
        for string in strings:
            if len(string) > self.max_length or not set(string) <= set(CHAR_TOKENS):
                raise ToytasksError(f"cannot tokenize {string!r}: brackets only, at most {self.max_length}")
        # All strings at once: [start], the brackets, [end], then padding, as one byte array.
        text = "".join(f"<{s}>".ljust(self.n_ctx, " ") for s in strings).encode()
        codes = torch.frombuffer(bytearray(text), dtype=torch.uint8).view(len(strings), self.n_ctx).long()
        tokens = torch.full_like(codes, PAD)
        for char, token in {"<": START, ">": END, "(": OPEN, ")": CLOSE}.items():
            tokens[codes == ord(char)] = token
        return {"tokens": tokens, "attention_mask": (tokens != PAD).long()}

    @staticmethod
    def decode(tokens: torch.Tensor) -> list[str]:
        """Bracket strings back from tokens [batch, pos] (special tokens dropped)."""
        chars = {OPEN: "(", CLOSE: ")"}
        return ["".join(chars.get(t, "") for t in row) for row in tokens.tolist()]

    # --- data -----------------------------------------------------------------------------------
    def make_dataset(self):
        from datasets import Dataset, DatasetDict

        rng = np.random.default_rng(self.data_seed)
        train, test = [], []
        for group, size in self.group_sizes.items():
            strings = []
            counters = self.counters(group)
            for counter, n in zip(counters, _spread(size, [c.total for c in counters])):
                strings += _draw_distinct(counter, n, rng)
            strings = [strings[i] for i in rng.permutation(len(strings))]
            n_train = self._splits[group][0]
            kind, near, _ = GROUPS[group]
            train += [(s, kind, near) for s in strings[:n_train]]
            test += [(s, kind, near) for s in strings[n_train:]]
        shuffle = lambda rows: [rows[i] for i in rng.permutation(len(rows))]
        return DatasetDict(train=Dataset.from_dict(self._columns(shuffle(train))),
                           test=Dataset.from_dict(self._columns(shuffle(test))))

    def _columns(self, rows: list[tuple[str, str, bool]]) -> dict[str, list]:
        strings = [s for s, _, _ in rows]
        batch = self.tokenize(strings)
        label = [BALANCED if kind == "balanced" else UNBALANCED for _, kind, _ in rows]
        targets = torch.full_like(batch["tokens"], IGNORE)
        targets[:, 0] = torch.tensor(label)
        return dict(string=strings, label=label, kind=[k for _, k, _ in rows],
                    near_miss=[near for _, _, near in rows], length=[len(s) for s in strings],
                    depth=[max_depth(s) for s in strings], tokens=batch["tokens"].tolist(),
                    attention_mask=batch["attention_mask"].tolist(), targets=targets.tolist())


def max_depth(string: str) -> int:
    """The deepest nesting, read left to right: the most `(` left open at once (the highest
    elevation when the string is balanced, where both readings agree)."""
    steps = np.where(np.frombuffer(string.encode(), dtype=np.uint8) == ord("("), 1, -1)
    return int(max(0, np.cumsum(steps).max())) if string else 0


@functools.cache  # validation and the generator ask for the same counts
def _counter(n: int, accepts) -> PathCounter:
    return PathCounter(n, accepts)


def _draw_distinct(counter: PathCounter, n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct strings, a uniform choice among the counter's group (n <= its total)."""
    found: dict[str, None] = {}
    for _ in range(1000):
        if len(found) >= n:
            return list(found)[:n]
        batch = max(2 * (n - len(found)), 64)
        found.update(dict.fromkeys(_to_strings(counter.sample(batch, rng))))
    raise RuntimeError(f"drew too few distinct strings of length {counter.n}")  # a bug, not bad input
