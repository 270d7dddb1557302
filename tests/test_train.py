"""End to end on a seconds-long run: run directory, series, metrics, TensorBoard, load_run, resume."""
import json

import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.loss import loss_and_accuracy
from toytasks.training import train

GROKKING = CONFIGS / "grokking.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    overrides = [f"out_dir={out}", "task.p=11", "max_steps=30", "checkpoints.every=10",
                 "checkpoints.log_spaced=true", "log_every=7", "model.d_model=32", "model.d_head=8",
                 "model.d_mlp=64"]
    config = load_config(GROKKING, overrides)
    return load_run(train(config, progress=False)), overrides


def test_run_directory_layout(tiny_run):
    run, _ = tiny_run
    names = {p.name for p in run.path.iterdir()}
    assert {"config.yaml", "meta.json", "data", "series", "last.ckpt", "metrics.csv", "tb"} <= names
    assert run.path.parent.name == "grokking" and run.path.name == run.config.run_id
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["finished"] and meta["device"] == "cpu" and meta["versions"]["torch"] == torch.__version__
    assert not list(run.path.rglob("*.tmp"))


def test_series_schedule(tiny_run):
    run, _ = tiny_run
    assert run.steps == [0, 1, 2, 4, 8, 10, 20, 30]


def test_metrics_table_has_every_step(tiny_run):
    m = tiny_run[0].metrics
    assert list(m["step"]) == list(range(31))
    for column in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "weights/sq_norm"):
        assert column in m.columns
    assert m["val/loss"].notna().all() and m["train/loss"].iloc[:30].notna().all()
    assert m["train/loss"].iloc[29] < m["train/loss"].iloc[0]  # it learns


def test_model_at_reproduces_logged_val_loss(tiny_run):
    run, _ = tiny_run
    test = run.batch("test")
    metrics = run.metrics.set_index("step")
    for step in (0, 10, 30):
        model = run.model_at(step)
        assert not model.training
        with torch.no_grad():
            loss, acc = loss_and_accuracy(model(test["tokens"])[:, -1:], test["targets"][:, -1:])
        assert loss.item() == pytest.approx(metrics.loc[step, "val/loss"], rel=1e-6)
        assert acc.item() == pytest.approx(metrics.loc[step, "val/acc"], abs=1e-6)


def test_frozen_biases_stay_zero(tiny_run):
    run, _ = tiny_run
    final = dict(run.model_at(30).named_parameters())
    biases = [n for n in final if n.endswith("bias")]
    assert biases and all(final[n].abs().max() == 0 and not final[n].requires_grad for n in biases)


def test_tensorboard_has_the_curves(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run[0].path / "tb")).Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "val/loss", "val/acc", "weights/sq_norm"} <= set(tags)
    assert [e.step for e in events.Scalars("val/loss")] == list(range(31))


def test_finished_run_is_not_overwritten(tiny_run, capsys):
    run, overrides = tiny_run
    before = (run.path / "metrics.csv").read_text()
    assert main(["train", str(GROKKING), *overrides, "--no-progress"]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (run.path / "metrics.csv").read_text() == before


def test_model_at_unknown_step_is_a_clear_error(tiny_run):
    from toytasks.errors import ToytasksError

    with pytest.raises(ToytasksError, match="no checkpoint at step 5"):
        tiny_run[0].model_at(5)


def test_resume_continues_to_the_same_result(tmp_path, capsys):
    base = [str(GROKKING), "task.p=7", "model.d_model=16", "model.d_head=4", "model.d_mlp=32",
            "checkpoints.every=5", "checkpoints.resume_every=10", "log_every=5", "--no-progress"]
    assert main(["train", *base, "max_steps=20", f"out_dir={tmp_path}/a"]) == 0
    # A run stopped at step 10 and continued with --resume to the same 20 steps.
    first = load_config(GROKKING, ["task.p=7", "model.d_model=16", "model.d_head=4", "model.d_mlp=32",
                                   "checkpoints.every=5", "checkpoints.resume_every=10", "log_every=5",
                                   "max_steps=20", f"out_dir={tmp_path}/b"])
    _stop_at(first, 10)
    assert main(["train", *base, "max_steps=20", f"out_dir={tmp_path}/b", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("run: ")
    a, b = (load_run(p) for p in sorted((tmp_path).glob("*/grokking/*")))
    assert a.steps == b.steps
    final_a, final_b = a.model_at(20).state_dict(), b.model_at(20).state_dict()
    assert all(torch.equal(value, final_b[name]) for name, value in final_a.items())
    assert a.metrics.equals(b.metrics)


def _stop_at(config, step):
    """Train the first `step` steps of `config` and leave it unfinished, as a killed run would."""
    import dataclasses


    short = dataclasses.replace(config, max_steps=step)
    run_dir = train(short, progress=False)
    target = config.run_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(target)
    (target / "config.yaml").write_text(config.to_yaml())
    meta = json.loads((target / "meta.json").read_text())
    (target / "meta.json").write_text(json.dumps({**meta, "finished": False}))
    assert (target / "last.ckpt").exists()


def test_measure_refuses_an_unfinished_run(tiny_run, capsys):
    run, _ = tiny_run
    meta, table = run.path / "meta.json", (run.path / "metrics.csv").read_bytes()
    finished = meta.read_text()
    meta.write_text(json.dumps({**json.loads(finished), "finished": False}))  # training, or killed
    try:
        assert main(["measure", str(run.path), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has not finished" in err
        assert (run.path / "metrics.csv").read_bytes() == table
    finally:
        meta.write_text(finished)


def test_device_metrics_hand_back_what_was_added_across_drains():
    from toytasks.training.device_metrics import DeviceMetrics

    metrics = DeviceMetrics()
    for step in range(3):  # 0-d and [runs] tensors of several dtypes, and plain floats
        metrics.add(step, {"loss": torch.tensor(0.1 * step, dtype=torch.float32),
                           "runs": torch.tensor([step, -step]), "lr": 1e-3})
    rows = metrics.drain()
    assert list(rows) == [0, 1, 2]
    assert rows[2] == {"loss": float(torch.tensor(0.2, dtype=torch.float32)), "runs": [2.0, -2.0], "lr": 1e-3}
    assert metrics.drain() == {}
    many = torch.arange(5000.0)  # more than the first buffer: it grows, and keeps what it held
    metrics.add(7, {"first": torch.tensor(3.0)})
    metrics.add(7, {"many": many})
    rows = metrics.drain()
    assert rows[7]["first"] == 3.0 and rows[7]["many"] == many.tolist()
