"""The sequence-task CPU configs show their phenomena (each trains its config once)."""
import json

import pytest

from conftest import CONFIGS
from toytasks import load_run
from toytasks.config import load_config
from toytasks.training import train

pytestmark = pytest.mark.slow


def trained(name, tmp_path_factory):
    config = load_config(CONFIGS / f"{name}.yaml", [f"out_dir={tmp_path_factory.mktemp(name)}"])
    return load_run(train(config, progress=False))


def final_row(run):
    return run.metrics.set_index("step").loc[run.steps[-1]]


def test_no_position_learns_without_positions(tmp_path_factory):
    run = trained("no_position_cpu", tmp_path_factory)
    m = run.metrics
    assert m["val/loss"].dropna().iloc[0] > 5.0  # about log(299) at the start
    assert final_row(run)["val/loss"] < 0.5
    assert all(run.model_at(step).W_pos.abs().max() == 0 for step in run.steps)
    print(f"no-position: test loss {final_row(run)['val/loss']:.3f}")


def test_two_layers_form_an_induction_head(tmp_path_factory):
    run = trained("induction_cpu", tmp_path_factory)
    last = final_row(run)
    assert last["heads/induction_max"] > 0.5
    assert last["val/loss/repeated"] < last["val/loss/first"] / 4
    onset = json.loads((run.path / "heads.json").read_text())["induction_onset_step"]
    assert onset is not None and 0 < onset <= run.steps[-1]
    print(f"induction: best head {last['heads/induction_max']:.3f}, repeated {last['val/loss/repeated']:.3f}, "
          f"first {last['val/loss/first']:.3f}, onset step {onset}")


def test_one_layer_control_has_no_induction_head(tmp_path_factory):
    run = trained("induction_1layer_cpu", tmp_path_factory)
    m = run.metrics
    assert m["heads/induction_max"].max() < 0.5
    last = final_row(run)
    assert last["val/loss/repeated"] > last["val/loss/first"] / 4
    print(f"1-layer control: best head {m['heads/induction_max'].max():.3f}, repeated {last['val/loss/repeated']:.3f}, "
          f"first {last['val/loss/first']:.3f}")
