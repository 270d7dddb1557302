"""Configs: loading, overrides, and one-line errors with exit code 2 for every bad input."""
import pytest

from conftest import CONFIGS
from toytasks.cli import main
from toytasks.config import load_config

GROKKING = str(CONFIGS / "grokking.yaml")


def test_grokking_config_is_the_seed_notebooks():
    c = load_config(GROKKING)
    assert (c.task.p, c.task.frac_train, c.task.data_seed, c.model_seed) == (113, 0.3, 598, 999)
    m = c.model
    assert (m.n_layers, m.d_model, m.n_heads, m.d_head, m.d_mlp, m.act_fn) == (1, 128, 4, 32, 512, "relu")
    assert m.normalization is None and m.freeze_biases
    assert (c.optim.lr, c.optim.weight_decay, c.optim.betas) == (1e-3, 1.0, (0.9, 0.98))
    assert c.batch_size is None and c.max_steps == 25000 and c.checkpoints.every == 100
    assert c.experiment == "grokking"


def test_overrides_are_typed_and_nested():
    c = load_config(GROKKING, ["optim.lr=3e-3", "task.p=53", "optim.betas=[0.9,0.95]", "model.seed=5"])
    assert c.optim.lr == 3e-3 and c.task.p == 53 and c.optim.betas == (0.9, 0.95)
    assert c.model_seed == 5 and c.seed == 999
    assert c.task.d_vocab == 54 and c.task.d_vocab_out == 53  # derived, never stale


def test_run_id_is_a_hash_plus_seed_and_ignores_out_dir():
    a, b = load_config(GROKKING), load_config(GROKKING, ["out_dir=/elsewhere"])
    assert a.run_id == b.run_id and a.run_id.endswith("-s999")
    assert load_config(GROKKING, ["optim.lr=3e-3"]).run_id != a.run_id


def test_trainer_section_keeps_run_ids_and_counts_only_what_changes_results():
    import hashlib
    import json

    c = load_config(GROKKING)
    assert c.trainer.accelerator == "auto" and (c.trainer.devices, c.trainer.num_nodes) == (1, 1)
    # With the default trainer and the intervention switches off, the id is the one runs of this
    # config had before those fields existed (so `--resume` finds them).
    assert c.run_id == "913c40f5-s999"
    before = {k: v for k, v in c.to_dict().items() if k not in ("out_dir", "trainer", "loss", "loss_dtype")}
    for section, name in [("model", "init_scale"), ("optim", "grokfast"), ("optim", "orthograd"),
                          ("optim", "fixed_weight_norm")]:
        del before[section][name]
    assert c.run_id == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8] + "-s999"
    assert load_config(GROKKING, ["trainer.accelerator=cpu"]).run_id == c.run_id  # where, not what
    assert load_config(GROKKING, ["trainer.devices=2"]).run_id != c.run_id  # per-device batches


def test_an_ensemble_stands_for_one_single_run_per_seed():
    c = load_config(GROKKING, ["seeds=[0, 1]"])
    assert [(m.seed, m.seeds) for m in c.members] == [(0, None), (1, None)]
    assert c.members[1] == load_config(GROKKING, ["seed=1"])
    assert "seeds" not in c.members[0].to_dict() and c.to_dict()["seeds"] == [0, 1]
    assert load_config(GROKKING).members == [load_config(GROKKING)]


def test_yaml_round_trip(tmp_path):
    c = load_config(GROKKING, ["seed=0"])  # seed 0 is a seed, not "unset"
    path = tmp_path / "again.yaml"
    path.write_text(c.to_yaml())
    assert load_config(path) == c and load_config(path).model_seed == 0


@pytest.mark.parametrize("args, field", [
    ([GROKKING, "colour=red"], "colour: unknown key"),
    ([GROKKING, "model.colour=red"], "model.colour: unknown key"),
    ([GROKKING, "task.name=sorting"], "task.name: unknown task 'sorting'"),
    ([GROKKING, "task.p=1"], "task.p: must be at least 2"),
    ([GROKKING, "task.frac_train=1.0"], "task.frac_train: must be strictly between 0 and 1"),
    ([GROKKING, "task.frac_train=0"], "task.frac_train: must be strictly between 0 and 1"),
    ([GROKKING, "max_steps=0"], "max_steps: must be at least 1"),
    ([GROKKING, "max_steps=-5"], "max_steps: must be at least 1"),
    ([GROKKING, "max_steps=abc"], "max_steps: expected an integer, got 'abc'"),
    ([GROKKING, "optim.lr=-1"], "optim.lr: must be positive"),
    ([GROKKING, "model.attention=sideways"], "model.attention: must be one of causal, bidirectional"),
    ([GROKKING, "checkpoints.steps=[99999]"], "checkpoints.steps: step 99999 is past max_steps"),
    ([GROKKING, "nonsense"], "expected key=value"),
    ([GROKKING, "optim.lr=0"], "optim.lr: must be positive"),
    ([GROKKING, "batch_size=5000"], "batch_size: 5000 is more than the 3830 training examples"),
    ([GROKKING, "checkpoints.every=0"], "checkpoints.every: must be at least 1"),
    ([GROKKING, "measures.attention={}"], "measures.attention: unknown measure; known measures: brackets, digits, fourier, heads, lengths, llc, parity, softmax_collapse"),
    ([GROKKING, "measures.fourier=true"], "measures.fourier: expected a mapping of options"),
    ([GROKKING, "measures.fourier.threshold=2"], "measures.fourier.threshold: must be in (0, 1]"),
    ([GROKKING, "task.p=12"], "measures.fourier: needs an odd modulus"),
    ([GROKKING, "model.n_layers=2"], "measures.fourier: needs a 1-layer model"),
    ([GROKKING, "on_nonfinite=ignore"], "on_nonfinite: must be one of stop, skip"),
    ([GROKKING, "optim.betas=[0.9]"], "optim.betas: expected a list of 2 values"),
    (["no/such/file.yaml"], "no/such/file.yaml: config file not found"),
    ([GROKKING, "trainer.devices=0"], "trainer.devices: must be at least 1"),
    ([GROKKING, "trainer.strategy=fsdp"], "trainer.strategy: must be one of auto, ddp"),
    ([GROKKING, "trainer.accelerator=abacus"], "trainer.accelerator: must be one of auto, cpu"),
    ([GROKKING, "trainer.devices=2", "on_nonfinite=skip"], "on_nonfinite: `skip` needs one device"),
])
def test_bad_input_is_one_line_and_exit_2(args, field, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and field in err
    assert "Traceback" not in err


def test_invalid_yaml_names_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("seed: [1, 2\nmax_steps: 3\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: not valid YAML" in err


# --- property-based: whatever a user types, the loader answers with a Config or a one-line error

import os  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from toytasks.errors import ToytasksError  # noqa: E402

KEYS = ["seed", "max_steps", "out_dir", "task", "task.p", "task.frac_train", "task.name", "model.d_model",
        "model.attention", "optim.lr", "optim.betas", "checkpoints.steps", "measures.fourier", "batch_size",
        "model.seed", "checkpoints.every", "eval_every", "measures.heads", "measures", "on_nonfinite", "experiment",
        "task.vocab", "model", "optim"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
yaml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)
override_values = st.one_of(st.text(max_size=15), st.sampled_from(["abc", "[1,2", "{a: 1}", "${oops}", "-1", "1e-3",
                                                                   "null", "[0.9, 0.98]", "'x'", ":"]))


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=60), yaml_values.map(lambda v: __import__("yaml").safe_dump(v))),
       overrides=st.lists(st.one_of(st.text(max_size=20),
                                    st.tuples(st.sampled_from(KEYS), override_values).map("=".join)), max_size=3))
def test_arbitrary_yaml_and_overrides_never_traceback(tmp_path, text, overrides):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    for source in (path, GROKKING):
        try:
            load_config(source, overrides)
        except ToytasksError as error:
            assert str(error) and "\n" not in str(error).strip()


def test_learning_rate_schedules():
    from toytasks.optim import lr_factor

    assert [lr_factor(s, 10, "constant", 110) for s in (0, 5, 10, 110)] == [0, 0.5, 1, 1]
    assert [lr_factor(s, 10, "cosine", 110) for s in (5, 10, 110)] == [0.5, 1, 0]
    assert lr_factor(60, 10, "cosine", 110) == pytest.approx(0.5)
    with pytest.raises(ToytasksError, match="optim.schedule"):
        load_config(CONFIGS / "grokking.yaml", ["optim.schedule=linear"])
