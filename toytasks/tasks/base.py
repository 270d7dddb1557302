"""The task contract: what every task provides so that one LightningModule can train on it.

A task is a frozen dataclass of its own hyperparameters, registered by name with `@register`.
It derives `d_vocab`, `d_vocab_out` and `n_ctx` from them (never stored in the config), and
produces batches as dicts of tensors:

    tokens          [batch, pos]  int64, the model's input
    targets         [batch, pos]  int64, the answer at each position; -100 = not scored
    attention_mask  [batch, pos]  optional; 1 = attend, 0 = padding (bidirectional tasks)

A finite task enumerates its data once (`make_dataset`, a `datasets.DatasetDict` with `train` and
`test` splits holding at least `tokens` and `targets` columns). An infinite task draws batches on
the device (`sample(n, generator)`), using only the generator it is given.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from ..errors import ConfigError

IGNORE = -100  # targets equal to this are not scored (PyTorch's cross_entropy convention)
BATCH_KEYS = ("tokens", "targets", "attention_mask")

TASKS: dict[str, type["Task"]] = {}


def register(cls: type["Task"]) -> type["Task"]:
    """Class decorator: make a task available to configs under `cls.name`."""
    if not cls.name or cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r} is empty or taken")
    TASKS[cls.name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Task:
    name: ClassVar[str] = ""
    finite: ClassVar[bool] = True
    # Positions whose targets can be scored. The loss and accuracy look only at these, so a task
    # answering at one position does not pay for a float64 log-softmax at every position.
    scored_positions: ClassVar[slice] = slice(None)
    # Every batch has the same shape ([batch_size, n_ctx]), so a captured training step
    # (trainer.capture) can replay it; a task whose batches vary in shape sets this to False.
    fixed_shape: ClassVar[bool] = True
    # What a sweep's figure shows of a run of this task: its label, and the column of the run-set
    # summary (toytasks/analysis/run_set.py) that holds it.
    headline: ClassVar[tuple[str, str]] = ("final test loss", "final/val/loss")

    @property
    def d_vocab(self) -> int:
        raise NotImplementedError

    @property
    def d_vocab_out(self) -> int:
        raise NotImplementedError

    @property
    def n_ctx(self) -> int:
        raise NotImplementedError

    @property
    def n_train(self) -> int:
        """Finite tasks: the number of training examples (known without building the data)."""
        raise NotImplementedError(f"{self.name} is not a finite task")

    @property
    def n_examples(self) -> int:
        """Finite tasks: the number of examples in both splits (known without building them; used
        to refuse a data set too large for the machine). By default the training split's, a lower bound."""
        return self.n_train

    def make_dataset(self):
        """Finite tasks: the whole enumeration, split, as a `datasets.DatasetDict`."""
        raise NotImplementedError(f"{self.name} is not a finite task")

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Infinite tasks: n fresh examples on the generator's device."""
        raise NotImplementedError(f"{self.name} is not a sampled task")


def batch_from_split(split, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a stored split (all rows at once), on `device`."""
    columns = [k for k in BATCH_KEYS if k in split.column_names]
    table = split.with_format("torch", columns=columns)[:]
    return {k: table[k].to(device=device, dtype=torch.long) for k in columns}


@dataclasses.dataclass(frozen=True)
class TokenSequenceTask(Task):
    """A sampled task over tokens 0..vocab-1 (0 is BOS) that predicts tokens of the same vocabulary."""

    finite: ClassVar[bool] = False

    vocab: int = 100
    """Vocabulary size, BOS (token 0) included."""

    def __post_init__(self):
        if self.vocab < 3:
            raise ConfigError("vocab", f"must be at least 3, got {self.vocab}")

    @property
    def d_vocab(self) -> int:
        return self.vocab

    @property
    def d_vocab_out(self) -> int:
        return self.vocab
