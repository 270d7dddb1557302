"""Balanced brackets: the generator against a reference checker, the tokens, padding, measures."""
import collections
import itertools
import math
import random

import pytest
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from conftest import CONFIGS
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.errors import ConfigError
from toytasks.measures.brackets import length_buckets, unbalanced_contributions
from toytasks.analysis.figures import plot_run
from toytasks.tasks.brackets import (GROUPS, KINDS, PAD, Brackets, PathCounter, _to_strings, failure_kind,
                                     is_balanced)
from toytasks.training import train

SMALL = dict(max_length=14, size=600)


# --- the seed's checker, copied verbatim from ARENA 1.5.1 (its inputs adapted: `t`, `device`) --
t, device = torch, "cpu"


def is_balanced_vectorized_return_both(
    toks: Float[Tensor, "batch seq"]
) -> tuple[Bool[Tensor, "batch"], Bool[Tensor, "batch"]]:
    # SOLUTION
    table = t.tensor([0, 0, 0, 1, -1]).to(device)
    change = table[toks.to(device)].flip(-1)
    altitude = t.cumsum(change, -1)
    total_elevation_failure = altitude[:, -1] != 0
    negative_failure = altitude.max(-1).values > 0
    return total_elevation_failure, negative_failure


def seed_kinds(strings: list[str]) -> list[str]:
    """The seed's failure type of each string, as toytasks names it (the seed's `failure_types_dict`)."""
    n_ctx = max(map(len, strings)) + 2  # the seed's tokens: [start]=0 brackets [end]=2 [pad]=1 ...
    toks = torch.tensor([[0, *(3 if c == "(" else 4 for c in s), 2] + [1] * (n_ctx - len(s) - 2) for s in strings])
    total_elevation_failure, negative_failure = is_balanced_vectorized_return_both(toks)
    failure_types_dict = {
        "both": negative_failure & total_elevation_failure,  # "both failures"
        "negative": negative_failure & ~total_elevation_failure,  # "just neg failure"
        "total": ~negative_failure & total_elevation_failure,  # "just total elevation failure"
        "balanced": ~negative_failure & ~total_elevation_failure,
    }
    kinds = [None] * len(strings)
    for kind, mask in failure_types_dict.items():
        for i in mask.nonzero().flatten().tolist():
            assert kinds[i] is None
            kinds[i] = kind
    return kinds


def all_strings(max_length: int) -> list[str]:
    return ["".join(chars) for n in range(max_length + 1) for chars in itertools.product("()", repeat=n)]


def elevations(string: str) -> list[int]:
    """The elevation read as the seed's model reads it: right to left, `)` up (0 first)."""
    return [0, *itertools.accumulate(1 if char == ")" else -1 for char in reversed(string))]


@pytest.fixture(scope="module")
def dataset():
    return Brackets(**SMALL).make_dataset()


def test_kinds_are_the_seeds_on_every_string_up_to_12():
    strings = all_strings(12)
    assert len(strings) == 2 ** 13 - 1
    kinds = [failure_kind(s) for s in strings]
    assert kinds == seed_kinds(strings)
    assert collections.Counter(kinds)["total"] > 0 and collections.Counter(kinds)["both"] > 0
    # The seed reads right to left: a string that ends open is "both failures", one that starts
    # with too many `)` is "just total elevation failure".
    assert failure_kind("(()(") == "both" and failure_kind(")())") == "total" and failure_kind("))") == "total"


def test_labels_kinds_and_lengths(dataset):
    for split in ("train", "test"):
        rows = dataset[split]
        assert list(rows["kind"]) == seed_kinds(list(rows["string"]))
        for string, label, kind, length in zip(rows["string"], rows["label"], rows["kind"], rows["length"]):
            assert label == int(is_balanced(string)) == int(kind == "balanced")
            assert length == len(string) and length % 2 == 0 and 2 <= length <= SMALL["max_length"]
        assert set(rows["kind"]) == set(KINDS), f"every failure kind in {split}"
        near = [kind for kind, near in zip(rows["kind"], rows["near_miss"]) if near]
        assert set(near) == {"total", "negative", "both"}, "near-misses of every kind"


def test_kinds_and_near_misses_are_balanced():
    task = Brackets(max_length=20, size=6000)
    rows = task.make_dataset()
    strings = list(rows["train"]["string"]) + list(rows["test"]["string"])
    kinds = seed_kinds(strings)
    near = list(rows["train"]["near_miss"]) + list(rows["test"]["near_miss"])
    assert collections.Counter(kinds) == {"balanced": 3000, "total": 1000, "negative": 1000, "both": 1000}
    assert collections.Counter(k for k, n in zip(kinds, near) if n) == {"total": 500, "negative": 500, "both": 500}


def test_near_misses_are_one_step_from_balanced(dataset):
    rows = dataset["train"]
    for string, kind, near in zip(rows["string"], rows["kind"], rows["near_miss"]):
        elevation = elevations(string)
        if kind == "total":
            assert min(elevation) == 0 and (elevation[-1] == 2) == near
        if kind == "negative":
            assert elevation[-1] == 0 and (min(elevation) == -1) == near
        if kind == "both":
            assert min(elevation) < 0 and (abs(elevation[-1]) == 2) == near


def test_each_group_is_drawn_uniformly_among_the_seeds_strings_of_its_kind():
    """The strings of a group and length are drawn uniformly among all strings the seed puts there."""
    rng = __import__("numpy").random.default_rng(0)
    everything = [s for s in all_strings(8) if len(s) == 8]
    by_kind = dict(zip(everything, seed_kinds(everything)))
    for group, (kind, near, accepts) in GROUPS.items():
        members = {s for s in everything if by_kind[s] == kind and _near_miss(s, kind) == near}
        draws = collections.Counter(_to_strings(PathCounter(8, accepts).sample(200 * len(members), rng)))
        assert set(draws) == members, group  # every string of the group, and no other
        assert all(abs(count - 200) < 60 for count in draws.values()), group  # sd ~14


def _near_miss(string: str, kind: str) -> bool:
    elevation = elevations(string)
    return {"balanced": False, "total": elevation[-1] == 2, "negative": min(elevation) == -1,
            "both": abs(elevation[-1]) == 2}[kind]


def test_splits_are_disjoint_distinct_and_balanced_half(dataset):
    train, test = dataset["train"]["string"], dataset["test"]["string"]
    assert not set(train) & set(test)
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert len(train) + len(test) == SMALL["size"] and len(train) == Brackets(**SMALL).n_train
    labels = list(dataset["train"]["label"]) + list(dataset["test"]["label"])
    assert sum(labels) == SMALL["size"] // 2


def test_same_data_seed_same_dataset(dataset):
    again = Brackets(**SMALL).make_dataset()
    assert list(again["train"]["string"]) == list(dataset["train"]["string"])
    other = Brackets(**SMALL, data_seed=1).make_dataset()
    assert list(other["train"]["string"]) != list(dataset["train"]["string"])


def test_lengths_spread_evenly_and_long_strings_present():
    rows = Brackets(max_length=20, size=4000).make_dataset()["train"]
    balanced = collections.Counter(n for n, k in zip(rows["length"], rows["kind"]) if k == "balanced")
    assert balanced[2] == 1 and balanced[8] <= 14  # short lengths hold few distinct strings ...
    assert min(balanced[n] for n in (14, 16, 18, 20)) > 150  # ... their share goes to the long ones


def test_path_counts_and_uniform_draws():
    for n in (2, 4, 8, 12):
        totals = {g: PathCounter(n, accepts).total for g, (_, _, accepts) in GROUPS.items()}
        assert totals["balanced"] == math.comb(n, n // 2) // (n // 2 + 1)  # Catalan numbers
        assert sum(totals.values()) == 2 ** n  # the groups partition all strings
    counter = PathCounter(8, GROUPS["balanced"][2])
    draws = counter.sample(14_000, __import__("numpy").random.default_rng(0))
    strings = collections.Counter(tuple(row) for row in draws.tolist())
    assert len(strings) == 14  # every balanced string of length 8 ...
    assert all(abs(count - 1000) < 150 for count in strings.values())  # ... equally often (sd ~31)


def test_tokenizer_round_trip():
    task = Brackets(**SMALL)
    batch = task.tokenize(["(())", "", "()" * 7])
    assert batch["tokens"][0].tolist() == [0, 3, 3, 4, 4, 2] + [PAD] * 10  # n_ctx = 16
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * 14
    assert task.decode(batch["tokens"]) == ["(())", "", "()" * 7]
    for bad in ("(a)", "(" * 16):
        with pytest.raises(Exception, match="cannot tokenize"):
            task.tokenize(bad)


@pytest.mark.parametrize("field, value", [
    ("max_length", 7), ("max_length", 0), ("balanced_frac", 1.5), ("balanced_frac", -0.1),
    ("size", 10), ("frac_train", 1.0),
])
def test_bad_input_names_the_field(field, value):
    with pytest.raises(ConfigError) as error:
        Brackets(**{**SMALL, field: value})
    assert error.value.field == field


def test_bad_input_on_the_command_line(capsys, tmp_path):
    code = main(["train", str(CONFIGS / "brackets_cpu.yaml"), f"out_dir={tmp_path}", "task.max_length=21"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "task.max_length" in err


def test_bracket_measures_need_the_brackets_task():
    from toytasks.measures import check_measures

    with pytest.raises(ConfigError, match="measures.brackets: needs the brackets task"):
        check_measures(load_config(CONFIGS / "grokking_cpu.yaml", ["measures.brackets={}"]))


def test_length_buckets():
    assert length_buckets(40) == [(2, 10), (12, 20), (22, 30), (32, 40)]
    assert length_buckets(4) == [(2, 2), (4, 4)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("brackets")
    config = load_config(CONFIGS / "brackets_cpu.yaml", [
        f"out_dir={out}", "task.max_length=16", "task.size=2000", "max_steps=60", "batch_size=64",
        "checkpoints.every=20", "eval_every=20", "log_every=20", "optim.lr=3e-3",
        "measures.brackets.every=null"])  # at the checkpoint steps
    return load_run(train(config, progress=False))


def test_measures_by_group(tiny_run):
    metrics = tiny_run.metrics.set_index("step")
    last = metrics.loc[tiny_run.steps[-1]]
    # The same test split, the same weights: the overall accuracy is the logged test accuracy.
    assert last["brackets/acc/all"] == pytest.approx(last["val/acc"], abs=1e-6)  # val/acc is float32
    for group in (*KINDS, "near_miss", "len_02-04", "len_10-12", "depth_0-1", "depth_2-3"):
        assert 0 <= last[f"brackets/acc/{group}"] <= 1
        assert f"brackets/logit_diff/{group}" in metrics.columns
    assert last["brackets/logit_diff/balanced"] > last["brackets/logit_diff/both"]  # learning has begun
    written = plot_run(tiny_run)
    assert tiny_run.path / "plots" / "brackets_accuracy.png" in written


def test_unbalanced_contributions_add_up(tiny_run):
    """The seed's logit attribution: the components' terms sum to the final LayerNorm's input
    (less b_O), so their contributions sum to its projection on the unbalanced direction."""
    model = tiny_run.model_at(tiny_run.steps[-1])
    batch = tiny_run.batch("test")
    balanced = torch.tensor(tiny_run.dataset["test"]["label"]) == 1
    contributions, direction, r2 = unbalanced_contributions(model, batch["tokens"], batch["attention_mask"], balanced)
    assert list(contributions) == ["embed", "L0H0", "L0H1", "mlp0", "L1H0", "L1H1", "mlp1", "L2H0", "L2H1", "mlp2"]
    with torch.no_grad():
        _, cache = model.run_with_cache(batch["tokens"], attention_mask=batch["attention_mask"])
    projected = cache["resid_post", 2][:, 0].double() @ direction  # [batch]
    torch.testing.assert_close(sum(contributions.values()), projected - projected[balanced].mean(), rtol=0, atol=1e-5)
    assert all(c[balanced].mean().abs() < 1e-9 for c in contributions.values())
    assert 0 < r2 <= 1


def assert_padding_invariant(model, task, strings):
    """The position-0 logits ignore what stands in padded positions and how much padding there is."""
    batch = task.tokenize(strings)
    tokens, mask = batch["tokens"], batch["attention_mask"]
    with torch.no_grad():
        reference = model(tokens, attention_mask=mask)[:, 0]
        scrambled = torch.where(mask.bool(), tokens, torch.randint_like(tokens, 0, 5))
        assert not torch.equal(scrambled, tokens)
        torch.testing.assert_close(model(scrambled, attention_mask=mask)[:, 0], reference, rtol=0, atol=1e-5)
        for row, string in enumerate(strings):  # the same string with no padding at all
            short = tokens[row:row + 1, :len(string) + 2]
            torch.testing.assert_close(model(short)[:, 0], reference[row:row + 1], rtol=0, atol=1e-5)


def random_strings(n, max_length, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice("()") for _ in range(rng.randrange(0, max_length + 1, 2))) for _ in range(n)]


def test_padding_invariance_on_a_trained_checkpoint(tiny_run):
    model = tiny_run.model_at(tiny_run.steps[-1])
    assert_padding_invariant(model, tiny_run.task, random_strings(32, tiny_run.task.max_length))


@pytest.mark.slow
def test_brackets_cpu_reaches_its_targets(tmp_path):
    """configs/brackets_cpu.yaml: at least 99% test accuracy, and 97% on every failure kind."""
    run = load_run(train(load_config(CONFIGS / "brackets_cpu.yaml", [f"out_dir={tmp_path}"]), progress=False))
    last = run.metrics.set_index("step").loc[run.steps[-1]]
    groups = {g: last[f"brackets/acc/{g}"] for g in (*KINDS, "near_miss")}
    print(f"brackets_cpu: test acc {last['val/acc']:.4f}, " + ", ".join(f"{g} {a:.4f}" for g, a in groups.items()))
    assert last["val/acc"] >= 0.99
    assert all(accuracy >= 0.97 for accuracy in groups.values()), groups
    test = run.dataset["test"]
    assert_padding_invariant(run.model_at(run.steps[-1]), run.task, list(test["string"][:64]))


def test_offline_measures_reproduce_the_logged_ones(tiny_run):
    from toytasks.analysis.offline import measure_run

    logged = tiny_run.metrics.set_index("step")
    names = measure_run(tiny_run, progress=False)
    assert "brackets/acc/negative" in names
    again = tiny_run.metrics.set_index("step")
    for step in tiny_run.steps:
        for name in ("brackets/acc/all", "brackets/logit_diff/near_miss"):
            assert again.loc[step, name] == pytest.approx(logged.loc[step, name], abs=1e-6)
