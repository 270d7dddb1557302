"""The measure registry: a new measure is one file, and nothing outside toytasks/measures/ names one."""
import ast

import pytest

from conftest import CONFIGS, ROOT
from toytasks import load_run
from toytasks.analysis.figures import plot_run
from toytasks.analysis.offline import measure_run
from toytasks.config import load_config
from toytasks.errors import ConfigError
from toytasks.measures import MEASURES, Measure, applicable, check_measures
from toytasks.training import train

TINY_INDUCTION = ["task.vocab=20", "task.half=4", "model.d_model=16", "model.d_head=4", "batch_size=8",
                  "max_steps=10", "checkpoints.every=5", "eval_every=5", "log_every=5", "measures.heads=null"]


@pytest.fixture
def readme_measure():
    """The README's "Add a measure" example, registered as its file would be, and removed after."""
    section = (ROOT / "README.md").read_text().split("## Add a measure", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "toytasks.measures.attn_entropy"})
    yield MEASURES["attn_entropy"]
    del MEASURES["attn_entropy"]


def test_the_readme_example_is_a_whole_measure(readme_measure, tmp_path):
    """Trained with it, measured offline, plotted: the one file is all it takes."""
    config = load_config(CONFIGS / "induction_cpu.yaml", [*TINY_INDUCTION, f"out_dir={tmp_path}",
                                                          "measures.attn_entropy={}"])
    run = load_run(train(config, progress=False))
    logged = run.metrics.dropna(subset=["attn_entropy/L1H0"])
    assert logged["step"].tolist() == [0, 5, 10]  # the checkpoint steps, step 0 included
    assert ((logged.filter(like="attn_entropy/") >= 0).all()).all()
    before = run.metrics["attn_entropy/L0H0"].dropna().tolist()
    (run.path / "metrics.csv").write_text(run.metrics.drop(columns=logged.filter(like="attn_entropy/").columns)
                                          .to_csv(index=False))
    assert "attn_entropy/L0H0" in measure_run(run, progress=False)  # recomputed from the series
    assert run.metrics["attn_entropy/L0H0"].dropna().tolist() == pytest.approx(before, rel=1e-6)
    assert "attn_entropy.png" in {path.name for path in plot_run(run)}


def test_a_measure_that_does_not_apply_is_a_one_line_config_error(readme_measure):
    config = load_config(CONFIGS / "brackets_cpu.yaml", ["measures.attn_entropy={}"])
    with pytest.raises(ConfigError, match="^measures.attn_entropy: needs causal attention$"):
        check_measures(config)


@pytest.mark.parametrize("config, expected", [
    ("grokking_cpu", ["fourier", "softmax_collapse"]), ("induction_cpu", ["heads", "softmax_collapse"]),
    ("no_position_cpu", ["heads", "softmax_collapse"]), ("brackets_cpu", ["brackets", "softmax_collapse"]),
])
def test_which_measures_apply_to_each_config(config, expected):
    plain = load_config(CONFIGS / f"{config}.yaml", ["measures={}"])
    assert applicable(plain) == expected  # what `toytasks measure` computes for a run trained without them


def test_every_measure_declares_its_contract():
    for name, cls in MEASURES.items():
        assert issubclass(cls, Measure) and cls.name == name and cls.prefixes, name
        assert cls.__doc__ or __import__(cls.__module__).__doc__, name


def test_nothing_outside_the_measures_names_a_measure():
    """Training, `toytasks measure`, `toytasks plot`, the run-set summaries and the sweeps loop over
    the registry."""
    files = [*(ROOT / "toytasks" / "training").glob("*.py"), *(ROOT / "toytasks" / "analysis").glob("*.py"),
             *(ROOT / "toytasks").glob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                 and id(node) not in docstrings and node.value in MEASURES]
        named += [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in MEASURES
                  and isinstance(node.value, ast.Attribute) and node.value.attr == "measures"]
        assert not named, f"{path} names {named}"
