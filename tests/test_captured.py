"""The captured training step (trainer.capture), on the CPU: the switch, the choice, and the step
itself run without recording. The CUDA graphs themselves are tested in tests/test_cuda.py.

Run unrecorded, the captured step (static batch, RunsAdamW reading its row of the step table, the
metrics written into device buffers and copied out every log_every steps) gives the eager step's
run bit for bit on the CPU: same series, same metrics.csv, same summaries.
"""
import dataclasses
import json

import pytest
import torch

from test_ensemble import GROKKING, INDUCTION, TINY_GROKKING, TINY_INDUCTION, _stop_ensemble_at, assert_same_run
from test_grids import grid_configs
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.errors import ConfigError
from toytasks.training import captured, train, train_members
from toytasks.training.captured import MetricRing, Recorded, use_capture

CASES = {"grokking": (GROKKING, TINY_GROKKING), "induction": (INDUCTION, TINY_INDUCTION)}
CPU = "trainer.accelerator=cpu"  # bit for bit holds on the CPU; on a GPU the step is recorded (test_cuda.py)


def on_the_cpu(configs):
    return [dataclasses.replace(c, trainer=dataclasses.replace(c.trainer, accelerator="cpu")) for c in configs]


@pytest.fixture
def static_step_on_cpu(monkeypatch):
    """The captured step chosen on the CPU (where it runs unrecorded); counts its training steps."""
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda", "cpu"))
    calls = []
    original = captured.CapturedStep.train_step

    def counted(self, batch, step):
        calls.append(step)
        return original(self, batch, step)

    monkeypatch.setattr(captured.CapturedStep, "train_step", counted)
    return calls


# --- the switch and the choice --------------------------------------------------------------------

@pytest.mark.parametrize("value, mode", [("auto", "auto"), ("on", "on"), ("off", "off"), ("true", "on"), ("false", "off")])
def test_capture_switch_values(value, mode):
    config = load_config(GROKKING, [f"trainer.capture={value}"])
    assert config.trainer.capture_mode == mode
    assert config.run_id == load_config(GROKKING).run_id  # how a run trains, not what it computes


@pytest.mark.parametrize("overrides, message", [
    (["trainer.capture=maybe"], "trainer.capture: must be auto, on (true) or off (false), got 'maybe'"),
    (["trainer.capture=on", "on_nonfinite=skip"], "trainer.capture: `on` needs one device and on_nonfinite: stop"),
    (["trainer.capture=on", "trainer.devices=2"], "trainer.capture: `on` needs one device and on_nonfinite: stop"),
])
def test_bad_capture_configs_are_one_line_errors(overrides, message, capsys):
    assert main(["train", str(GROKKING), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_the_cpu_trains_eagerly(tmp_path, capsys):
    cpu = torch.device("cpu")
    assert not use_capture(load_config(GROKKING), cpu)  # auto: the eager step
    assert not use_capture(load_config(GROKKING, ["trainer.capture=off"]), cpu)
    with pytest.raises(ConfigError, match="needs a CUDA device, and this run trains on cpu"):
        use_capture(load_config(GROKKING, ["trainer.capture=on"]), cpu)
    assert main(["train", str(GROKKING), *TINY_GROKKING, "max_steps=3", f"out_dir={tmp_path}", "trainer.capture=on",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "error: trainer.capture: `on` needs a CUDA device, and this run trains on cpu; use auto or off\n"


def test_auto_leaves_out_what_it_cannot_capture(monkeypatch):
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda", "cpu"))
    cpu = torch.device("cpu")
    assert use_capture(load_config(GROKKING), cpu)
    assert not use_capture(load_config(GROKKING, ["on_nonfinite=skip"]), cpu)
    monkeypatch.setattr(type(load_config(GROKKING).task), "fixed_shape", False)
    assert not use_capture(load_config(GROKKING), cpu)
    with pytest.raises(ConfigError, match="needs batches of one shape, and modular_addition varies them"):
        use_capture(load_config(GROKKING, ["trainer.capture=on"]), cpu)


# --- the parts --------------------------------------------------------------------------------------

def test_metric_ring_keeps_every_row_in_order_and_spills_when_full():
    ring = MetricRing(["a", "b"], runs=2, capacity=3, device=torch.device("cpu"))
    for step in range(7):  # the 3rd and 6th rows fill it: copied out then, kept for the next drain
        ring.write({"a": torch.tensor([step, -step], dtype=torch.float64), "b": torch.tensor([0.5, 1.5])})
        ring.written(step * 10)
    rows = ring.drain()
    assert list(rows) == [0, 10, 20, 30, 40, 50, 60]
    assert rows[40] == {"a": [4.0, -4.0], "b": [0.5, 1.5]}
    assert ring.drain() == {} and int(ring.slot) == 0


def test_recorded_runs_its_function_when_not_recording():
    counter = torch.zeros(())
    step = Recorded(lambda: counter.add_(1), [counter], record=False)
    step()
    step()
    assert counter.item() == 2  # no warm-up run, nothing put back


# --- the step, unrecorded, equals the eager step ------------------------------------------------------

@pytest.mark.parametrize("name", ["grokking", "induction"])
def test_unrecorded_captured_step_is_the_eager_step(tmp_path, static_step_on_cpu, monkeypatch, name):
    path, tiny = CASES[name]
    config = load_config(path, [*tiny, "max_steps=30", f"out_dir={tmp_path / 'captured'}", CPU])
    run_dir = train(config, progress=False)
    assert static_step_on_cpu == list(range(30))
    assert json.loads((run_dir / "meta.json").read_text())["captured_step"] is False  # not recorded
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda",))
    eager = train(dataclasses.replace(config, out_dir=str(tmp_path / "eager")), progress=False)
    assert_same_run(run_dir, eager, exact=True)


@pytest.mark.parametrize("intervention", [
    ["optim.grokfast={filter: ema, alpha: 0.9, lamb: 2.0}"], ["optim.grokfast={filter: ma, window: 5, lamb: 5.0}"],
    ["optim.orthograd=true", "optim.weight_decay=0"], ["loss=stablemax", "optim.weight_decay=0"],
    ["optim.fixed_weight_norm=true", "optim.weight_decay=0"], ["loss_dtype=float32"]],
    ids=["grokfast_ema", "grokfast_ma", "orthograd", "stablemax", "fixed_norm", "float32_loss"])
def test_unrecorded_captured_step_with_each_intervention_is_the_eager_step(tmp_path, static_step_on_cpu, monkeypatch,
                                                                         intervention):
    """The interventions act where the captured step leaves room for them (between its graphs,
    after its update, in the loss it records): the same run as the eager step, bit for bit."""
    config = load_config(GROKKING, [*TINY_GROKKING, *intervention, "max_steps=30",
                                    f"out_dir={tmp_path / 'captured'}", CPU])
    run_dir = train(config, progress=False)
    assert static_step_on_cpu == list(range(30))
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda",))
    eager = train(dataclasses.replace(config, out_dir=str(tmp_path / "eager")), progress=False)
    assert_same_run(run_dir, eager, exact=True)


def test_unrecorded_captured_grid_is_the_eager_grid(tmp_path, static_step_on_cpu, monkeypatch):
    run_dirs = train_members(on_the_cpu(grid_configs("induction", tmp_path / "captured")), progress=False)
    assert static_step_on_cpu == list(range(30))
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda",))
    for run_dir, eager in zip(run_dirs, train_members(on_the_cpu(grid_configs("induction", tmp_path / "eager")), progress=False)):
        assert_same_run(run_dir, eager, exact=True)


def test_captured_run_resumes_with_the_eager_step(tmp_path, static_step_on_cpu, monkeypatch):
    """A captured run killed at step 10 leaves a one-run last.ckpt that the eager step resumes from."""
    config = load_config(INDUCTION, [*TINY_INDUCTION, "max_steps=30", f"out_dir={tmp_path / 'a'}", "seeds=[0]", CPU])
    _stop_ensemble_at(config, 10)
    assert static_step_on_cpu == list(range(10))
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda",))
    resumed = train(config.members[0], resume=True, progress=False)
    eager = train(dataclasses.replace(config.members[0], out_dir=str(tmp_path / "b")), progress=False)
    assert_same_run(resumed, eager, exact=True)


def test_what_acts_on_gradients_sees_them_before_clipping_in_both_steps(tmp_path, static_step_on_cpu, monkeypatch):
    """Clipping runs eagerly between the captured step's two graphs, where the eager step clips:
    a callback's on_before_optimizer_step (where gradient interventions act) sees the same
    unclipped gradients in both."""
    import lightning as L

    class GradNorms(L.Callback):
        def __init__(self):
            self.norms = []

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(module.runs.run_grads(0)))).item())

    def norms(name):
        seen = GradNorms()
        config = load_config(INDUCTION, [*TINY_INDUCTION, "max_steps=10", f"out_dir={tmp_path / name}", CPU])
        train(config, progress=False, callbacks=[seen])
        return seen.norms

    captured_norms = norms("captured")
    assert static_step_on_cpu == list(range(10))
    monkeypatch.setattr(captured, "CAPTURE_DEVICES", ("cuda",))
    eager_norms = norms("eager")
    assert captured_norms == eager_norms
    assert max(eager_norms) > 0.05  # above optim.grad_clip: the callback saw them unclipped
