"""Power et al.'s binary operations mod p: labels against plain Python, modular addition's data kept,
the Fourier measures where their definition holds (and for subtraction, exactly), division groks."""
import math

import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import config_from_dict, load_config
from toytasks.errors import ConfigError
from toytasks.fourier import logit_periodicity, sum_directions
from toytasks.measures import check_measures
from toytasks.measures.fourier import FourierMeasure, FourierOptions
from toytasks.tasks.modular_addition import ModularAddition
from toytasks.tasks.modular_arithmetic import OPS, ModularArithmetic
from toytasks.training import train

REFERENCE = {  # plain Python, written from Power et al.'s Table 1
    "add": lambda x, y, p: (x + y) % p,
    "sub": lambda x, y, p: (x - y) % p,
    "mul": lambda x, y, p: (x * y) % p,
    "div": lambda x, y, p: x * pow(y, -1, p) % p,
    "div_if_odd_else_sub": lambda x, y, p: x * pow(y, -1, p) % p if y % 2 else (x - y) % p,
    "x^2+y^2": lambda x, y, p: (x ** 2 + y ** 2) % p,
    "x^2+xy+y^2": lambda x, y, p: (x ** 2 + x * y + y ** 2) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x ** 2 + x * y + y ** 2 + x) % p,
    "x^3+xy": lambda x, y, p: (x ** 3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x ** 3 + x * y ** 2 + y) % p,
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_labels_match_plain_python(op):
    p = 11
    ds = ModularArithmetic(p=p, frac_train=0.5, op=op).make_dataset()
    pairs = set()
    for split in ("train", "test"):
        for row in ds[split]:
            assert row["tokens"] == [row["a"], row["b"], p]
            assert row["targets"] == [-100, -100, row["label"]]
            assert row["label"] == REFERENCE[op](row["a"], row["b"], p), (op, row)
            pairs.add((row["a"], row["b"]))
    expected = {(a, b) for a in range(p) for b in range(p) if op != "div" or b != 0}
    assert pairs == expected  # every pair once: the splits cover them and do not overlap
    assert len(ds["train"]) == int(len(expected) * 0.5)


def test_division_is_the_inverse_of_multiplication():
    ds = ModularArithmetic(p=13, frac_train=0.5, op="div").make_dataset()
    for row in ds["train"]:
        assert row["label"] * row["b"] % 13 == row["a"]


def test_op_add_is_modular_addition_exactly():
    """The same pairs, in the same order, with the same split: the seed's data."""
    for p, frac, seed in ((13, 0.3, 4), (113, 0.3, 598)):
        plain = ModularAddition(p=p, frac_train=frac, data_seed=seed)
        general = ModularArithmetic(p=p, frac_train=frac, data_seed=seed, op="add")
        assert all(torch.equal(x, y) for x, y in zip(plain.split_indices(), general.split_indices()))
        if p < 50:
            a, b = plain.make_dataset(), general.make_dataset()
            assert all(a[s].to_dict() == b[s].to_dict() for s in ("train", "test"))


@pytest.mark.parametrize("fields, field", [
    ({"op": "pow"}, "op"), ({"op": "div", "p": 12}, "p"), ({"p": 1}, "p"), ({"frac_train": 1.0}, "frac_train"),
])
def test_bad_input_names_the_field(fields, field):
    with pytest.raises(ConfigError) as error:
        ModularArithmetic(**{"p": 11, **fields})
    assert error.value.field == field


def test_bad_op_on_the_command_line(capsys, tmp_path):
    code = main(["train", str(CONFIGS / "modular_division_cpu.yaml"), f"out_dir={tmp_path}", "task.op=pow"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "task.op" in err


# --- the Fourier measures ------------------------------------------------------------------------

def config_for(op: str, p: int = 13, **model):
    return config_from_dict({"task": {"name": "modular_arithmetic", "p": p, "op": op, "frac_train": 0.5},
                             "max_steps": 1, "model": model, "measures": {"fourier": {}}})


@pytest.mark.parametrize("op", ["add", "sub"])
def test_fourier_measures_apply_to_addition_and_subtraction(op):
    check_measures(config_for(op))


@pytest.mark.parametrize("op", sorted(set(OPS) - {"add", "sub"}))
def test_fourier_measures_refuse_other_operations_in_one_line(op):
    with pytest.raises(ConfigError) as error:
        check_measures(config_for(op))
    message = str(error.value)
    assert message.startswith("measures.fourier: applies to modular addition and subtraction") and "\n" not in message
    assert op in message


def test_subtraction_directions_are_those_of_a_minus_b():
    p = 13
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    w = 2 * math.pi / p
    directions = sum_directions(p, sign=-1)  # [p//2, 2, p*p]
    expected = torch.cos(w * 3 * (a - b).double())
    assert torch.allclose(directions[2, 0].double(), expected / expected.norm(), atol=1e-6)


def test_subtraction_logit_periodicity_is_exact_for_cos_w_a_minus_b_minus_c():
    p = 13
    a, b = torch.arange(p).repeat_interleave(p).double(), torch.arange(p).repeat(p).double()
    c = torch.arange(p).double()
    logits = torch.cos(2 * math.pi / p * 5 * (a[:, None] - b[:, None] - c))  # [p*p, p]
    mask = torch.zeros(p // 2, dtype=torch.bool)
    mask[4] = True  # k = 5
    cos_sims, residual = logit_periodicity(logits, mask, p, sign=-1)
    assert residual.item() == pytest.approx(0, abs=1e-6) and cos_sims[4].item() == pytest.approx(1, rel=1e-6)
    assert logit_periodicity(logits, mask, p)[1].item() > 0.9  # the a + b cube does not explain it


def test_fourier_measure_on_subtraction_uses_a_minus_b():
    """The measure's labels, and so its restricted and excluded losses, are those of a - b."""
    measure = FourierMeasure(FourierOptions(), config_for("sub", p=7))
    a, b = measure.tokens[:, 0], measure.tokens[:, 1]
    assert torch.equal(measure.labels, (a - b) % 7)
    assert measure.sign == -1
    assert FourierMeasure(FourierOptions(), config_for("add", p=7)).sign == 1


@pytest.fixture(scope="module")
def tiny_subtraction_run(tmp_path_factory):
    config = load_config(CONFIGS / "modular_division_cpu.yaml", [
        f"out_dir={tmp_path_factory.mktemp('sub')}", "task.op=sub", "task.p=11", "max_steps=20",
        "checkpoints.every=10", "log_every=10", "model.d_model=32", "model.d_head=8", "model.d_mlp=64",
        "measures.fourier={}"])
    return load_run(train(config, progress=False))


def test_a_subtraction_run_logs_the_fourier_measures(tiny_subtraction_run):
    metrics = tiny_subtraction_run.metrics.dropna(subset=["fourier/restricted_loss_live_freqs"])
    assert metrics["step"].tolist() == tiny_subtraction_run.steps
    # At step 0 the restricted loss is near log p: nothing is learnt yet.
    assert metrics["fourier/restricted_loss_live_freqs"].iloc[0] == pytest.approx(math.log(11), rel=0.1)


# --- the phenomenon --------------------------------------------------------------------------------

@pytest.mark.slow
def test_division_groks(tmp_path):
    """configs/modular_division_cpu.yaml, cut at step 1,100 (it groks near step 930): train accuracy
    reaches 1 with test accuracy near chance, and test accuracy reaches 0.99 only much later."""
    config = load_config(CONFIGS / "modular_division_cpu.yaml", [f"out_dir={tmp_path}", "max_steps=1100",
                                                                  "checkpoints.every=100"])
    m = load_run(train(config, progress=False)).metrics.dropna(subset=["val/acc", "train/acc"])
    memorised = m[(m["train/acc"] >= 0.99) & (m["val/acc"] <= 0.2)]
    assert not memorised.empty, "never memorised with test accuracy below 0.2"
    first = memorised["step"].iloc[0]
    grokked = m[(m["step"] > first) & (m["val/acc"] >= 0.99)]
    assert not grokked.empty, "test accuracy never reached 0.99"
    assert grokked["step"].iloc[0] >= first + 500, (first, grokked["step"].iloc[0])  # long after: grokking
    print(f"memorised at step {first}, grokked at step {grokked['step'].iloc[0]}")
