"""Endless training batches that live on the model's device.

No DataLoader workers and no host-to-device copy per step: a finite task's train split is moved
to the device once and either served whole (full batch) or sampled from with a seeded
`torch.Generator`; an infinite task draws each batch on the device from its own generator.
The generator's state is part of the resumable checkpoint, so a resumed run sees the same data.
An ensemble of runs trained together (`seeds:`) draws one stream per run (`RunBatches`).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from .tasks import Task
from .tasks.base import BATCH_KEYS

Batch = dict[str, torch.Tensor]
HELD_OUT_SEED = 1_000_003  # added to the run's seed: a sampled task's evaluation batch
# PyTorch's CPU generator (mt19937) uses only the low 32 bits of a seed, so seeds that differ only
# above them give the same numbers. Every seed of a run's data streams differs in the low bits.
RANK_STRIDE = 0x9E3779B9  # odd: ranks 0..2^32-1 give distinct low 32 bits
SAMPLE_MIX = 0x2545F491  # odd: multiplies the seeds of run.sample into their own order


def stream_seed(seed: int, rank: int = 0) -> int:
    """The seed of a run's training stream in DDP process `rank` (the run's seed in process 0)."""
    return seed + rank * RANK_STRIDE


def run_streams(seed: int, world_size: int = 1) -> set[int]:
    """The low 32 bits of the seeds of every stream a run draws its data from (training and held out)."""
    return {stream_seed(seed, rank) % 2**32 for rank in range(world_size)} | {(seed + HELD_OUT_SEED) % 2**32}


def sample_seed(seed: int, run_seed: int, world_size: int = 1) -> int:
    """The generator seed of `run.sample(n, seed)`: never one of the run's own data streams."""
    mixed = (seed * SAMPLE_MIX + 0x5EED) % 2**32
    if mixed in run_streams(run_seed, world_size):
        raise ValueError(f"seed {seed} would draw one of the run's own data streams; use another seed")
    return mixed


def held_out_batch(task: Task, seed: int, n: int = 512) -> Batch:
    """A sampled task's fixed evaluation batch, from a generator of its own (never the training one)."""
    return task.sample(n, torch.Generator().manual_seed(seed + HELD_OUT_SEED))


class TrainBatches:
    """An iterable of `n_steps` batches for Lightning's fit loop (which stops at max_steps)."""

    def __init__(self, task: Task, n_steps: int, batch_size: Optional[int], seed: int,
                 device: torch.device, train_split: Optional[Batch] = None):
        if task.finite and train_split is None:
            raise ValueError("a finite task needs its train split")
        if not task.finite and batch_size is None:
            raise ValueError(f"{task.name} samples its data: set batch_size")
        self.task, self.n_steps, self.batch_size = task, n_steps, batch_size
        self.train_split = train_split
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        if not self.task.finite:
            return self.task.sample(self.batch_size, self.generator)
        if self.batch_size is None:
            return self.train_split
        n = len(self.train_split["tokens"])
        index = torch.randint(n, (self.batch_size,), generator=self.generator, device=self.generator.device)
        return {k: v[index] for k, v in self.train_split.items()}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class RunBatches:
    """The batches of every run trained together, one stream each: for several runs stacked
    [run, batch, pos], or a full batch shared by all of them [batch, pos]; for one run, its own."""

    def __init__(self, streams: list[TrainBatches], n_steps: int, shared: Optional[Batch] = None):
        self.streams, self.n_steps, self.shared = streams, n_steps, shared

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self) -> Iterator[Batch]:
        while True:
            if self.shared is not None:
                yield self.shared
            elif len(self.streams) == 1:
                yield self.streams[0].next_batch()
            else:
                batches = [stream.next_batch() for stream in self.streams]
                yield {k: torch.stack([b[k] for b in batches]) for k in BATCH_KEYS if k in batches[0]}

    def state_dict(self) -> dict:
        return {"streams": [stream.state_dict() for stream in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        for stream, part in zip(self.streams, state["streams"]):
            stream.load_state_dict(part)
