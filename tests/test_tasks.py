"""The task contract, checked for every registered task, and the modular-addition split."""
import sys

import pytest
import torch

from toytasks.tasks import IGNORE, TASKS, batch_from_split
from toytasks.tasks.modular_addition import ModularAddition

SMALL = {  # a small instance of each task
    "modular_addition": dict(p=7, frac_train=0.5),
    "previous_token": dict(vocab=20, length=8),
    "induction": dict(vocab=20, half=5),
    "brackets": dict(max_length=14, size=200),
    "modular_arithmetic": dict(p=7, frac_train=0.5, op="div"),
    "permutation_composition": dict(n=3, frac_train=0.5),
    "sparse_parity": dict(n_bits=8, k=3),
    "addition": dict(n_digits=3),
    "sort": dict(vocab=6, max_train_len=4, max_eval_len=7),
}


@pytest.fixture(params=sorted(TASKS))
def task(request):
    return TASKS[request.param](**SMALL.get(request.param, {}))


def batches(task):
    if task.finite:
        ds = task.make_dataset()
        assert set(ds) == {"train", "test"}
        return [batch_from_split(ds["train"]), batch_from_split(ds["test"])]
    return [task.sample(16, torch.Generator().manual_seed(0))]


def test_every_task_is_tested_here():
    assert set(SMALL) >= set(TASKS), "add a small instance of the new task to SMALL"


def test_contract(task):
    doc = sys.modules[type(task).__module__].__doc__
    assert doc and "tokens" in doc, "a task's file documents its encoding with a worked example"
    for batch in batches(task):
        tokens, targets = batch["tokens"], batch["targets"]
        assert tokens.dtype == targets.dtype == torch.long
        assert tokens.shape == targets.shape and tokens.shape[1] == task.n_ctx
        assert 0 <= tokens.min() and tokens.max() < task.d_vocab
        scored = targets != IGNORE
        assert scored.any()
        assert 0 <= targets[scored].min() and targets[scored].max() < task.d_vocab_out
        outside = torch.ones_like(scored)
        outside[:, task.scored_positions] = False
        assert not (scored & outside).any(), "targets outside scored_positions would be ignored"
        if "attention_mask" in batch:
            assert batch["attention_mask"].shape == tokens.shape


def test_sampling_uses_only_its_generator(task):
    if task.finite:
        pytest.skip("finite task: no sampling")
    a = task.sample(8, torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # the global RNG must not matter
    b = task.sample(8, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_modular_addition_encoding():
    ds = ModularAddition(p=7, frac_train=0.5).make_dataset()
    for row in ds["train"]:
        assert row["tokens"] == [row["a"], row["b"], 7]
        assert row["targets"] == [IGNORE, IGNORE, (row["a"] + row["b"]) % 7] and row["label"] == row["targets"][-1]


def test_split_disjoint_covering_and_seeded():
    task = ModularAddition(p=13, frac_train=0.3, data_seed=4)
    ds = task.make_dataset()
    train = {tuple(t) for t in ds["train"]["tokens"]}
    test = {tuple(t) for t in ds["test"]["tokens"]}
    assert not train & test and len(train | test) == 13 * 13
    assert len(train) == int(13 * 13 * 0.3) == len(ds["train"])
    assert ds["train"]["tokens"] == ModularAddition(p=13, frac_train=0.3, data_seed=4).make_dataset()["train"]["tokens"]
    assert ds["train"]["tokens"] != ModularAddition(p=13, frac_train=0.3, data_seed=5).make_dataset()["train"]["tokens"]


def test_split_is_the_seed_notebooks():
    """The seed: torch.manual_seed(DATA_SEED); indices = torch.randperm(p*p); first 30% train."""
    p = 113
    with torch.random.fork_rng():
        torch.manual_seed(598)
        indices = torch.randperm(p * p)
    train, test = ModularAddition(p=p).split_indices()
    cutoff = int(p * p * 0.3)
    assert torch.equal(train, indices[:cutoff]) and torch.equal(test, indices[cutoff:])
