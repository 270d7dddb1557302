"""Composition in S_n: the tokens, the products against plain Python, the group laws, the split."""
import itertools
import random

import pytest
import torch

from toytasks.errors import ConfigError
from toytasks.tasks.permutations import OPS, PermutationComposition


def python_product(op: str, x: tuple, y: tuple) -> tuple:
    """Power et al.'s products, with tuples of images: the left factor acts first."""
    then = lambda f, g: tuple(g[f[i]] for i in range(len(f)))  # noqa: E731  f, then g
    inverse = tuple(sorted(range(len(x)), key=lambda i: x[i]))
    return {"xy": then(x, y), "xyx^-1": then(then(x, y), inverse), "xyx": then(then(x, y), x)}[op]


def test_tokens_are_the_permutations_in_lexicographic_order():
    task = PermutationComposition(n=4)
    perms = list(itertools.permutations(range(4)))
    assert [tuple(row) for row in task.elements.tolist()] == perms
    assert task.token_of(task.elements).tolist() == list(range(24))
    assert (task.order, task.d_vocab, task.d_vocab_out, task.n_ctx) == (24, 25, 24, 3)


@pytest.mark.parametrize("op", OPS)
def test_products_match_plain_python(op):
    task = PermutationComposition(n=4, op=op, frac_train=0.5)
    perms = list(itertools.permutations(range(4)))
    ds = task.make_dataset()
    seen = set()
    for split in ("train", "test"):
        for row in ds[split]:
            assert row["tokens"] == [row["x"], row["y"], 24] and row["targets"] == [-100, -100, row["label"]]
            assert perms[row["label"]] == python_product(op, perms[row["x"]], perms[row["y"]])
            seen.add((row["x"], row["y"]))
    assert len(seen) == 24 * 24 and len(ds["train"]) == 24 * 24 // 2


def test_the_docstring_example():
    task = PermutationComposition(n=3)
    assert task.compose(torch.tensor(1), torch.tensor(3)).item() == 2


def test_s5_is_a_non_abelian_group():
    task = PermutationComposition(n=5)
    e = torch.arange(120)
    identity = torch.zeros(120, dtype=torch.long)
    assert torch.equal(task.compose(identity, e), e) and torch.equal(task.compose(e, identity), e)
    rng = random.Random(0)
    for _ in range(200):
        x, y, z = (torch.tensor(rng.randrange(120)) for _ in range(3))
        assert task.compose(task.compose(x, y), z) == task.compose(x, task.compose(y, z))
    table = task.compose(e.repeat_interleave(120), e.repeat(120)).view(120, 120)
    assert all(sorted(row.tolist()) == list(range(120)) for row in table)  # a Latin square: inverses
    assert not torch.equal(table, table.T)


def test_split_is_seeded_and_disjoint():
    a = PermutationComposition(n=4, frac_train=0.3, data_seed=1).make_dataset()
    b = PermutationComposition(n=4, frac_train=0.3, data_seed=1).make_dataset()
    c = PermutationComposition(n=4, frac_train=0.3, data_seed=2).make_dataset()
    assert a["train"]["tokens"] == b["train"]["tokens"] != c["train"]["tokens"]
    assert not {tuple(t) for t in a["train"]["tokens"]} & {tuple(t) for t in a["test"]["tokens"]}


@pytest.mark.parametrize("fields, field", [({"n": 7}, "n"), ({"n": 1}, "n"), ({"op": "yx"}, "op"),
                                           ({"frac_train": 0.0}, "frac_train")])
def test_bad_input_names_the_field(fields, field):
    with pytest.raises(ConfigError) as error:
        PermutationComposition(**fields)
    assert error.value.field == field


@pytest.mark.slow
def test_s4_composition_groks(tmp_path):
    """configs/permutation_cpu.yaml as it is: S_4 memorised early with the test at chance, the test
    accuracy still low long after, then generalised to the 25% of the pairs never trained on."""
    from conftest import CONFIGS
    from toytasks import load_run
    from toytasks.config import load_config
    from toytasks.phases import milestones
    from toytasks.training import train

    config = load_config(CONFIGS / "permutation_cpu.yaml", [f"out_dir={tmp_path}"])
    m = load_run(train(config, progress=False)).metrics
    test = m.dropna(subset=["val/acc"]).set_index("step")["val/acc"]
    steps = milestones(m)
    memorised, grokked = steps["memorisation_end"], steps["grokking_step"]
    assert memorised is not None and memorised <= 100, steps
    at_memorised = test[test.index <= memorised].iloc[-1]
    assert at_memorised < 0.25, ("memorised with the test at", at_memorised)
    later = test[test.index <= 5 * memorised].iloc[-1]
    assert later < 0.3, ("the test accuracy at 5x the memorisation step", later)
    assert grokked is not None and grokked >= 5 * memorised, steps
    after = (test[test.index >= grokked] >= 0.99).mean()  # Adam's spikes may dip it for a while
    assert after >= 0.75, ("share of the evaluations after the grokking step at 0.99", after)
    print(f"train accuracy 0.99 at step {memorised} (test {at_memorised:.3f}), test {later:.3f} at step "
          f"{5 * memorised}, test accuracy 0.99 at step {grokked}, and at {after:.0%} of the evaluations after it")
