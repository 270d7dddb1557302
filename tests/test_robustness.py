"""Crash safety, exact resume after SIGKILL, locks, safe loading, numerical faults, determinism."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, ROOT
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.errors import ToytasksError
from toytasks.training.replicas import OneRun
from toytasks.storage import RunLock
from toytasks.training import train

GROKKING = CONFIGS / "grokking.yaml"
TINY = ["task.p=11", "model.d_model=32", "model.d_head=8", "model.d_mlp=64", "checkpoints.every=20",
        "checkpoints.resume_every=50", "log_every=10"]


def tiny(out_dir, *extra):
    return load_config(GROKKING, [*TINY, f"out_dir={out_dir}", *extra])


def assert_same_run(a, b):
    assert a.steps == b.steps
    for step in a.steps:
        weights_a = load_file(str(a.path / f"series/step_{step:06d}.safetensors"))
        weights_b = load_file(str(b.path / f"series/step_{step:06d}.safetensors"))
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), step
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=True)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps = ["max_steps=1500"]
    reference = load_run(train(tiny(tmp_path / "a", *steps), progress=False))

    command = [sys.executable, "-m", "toytasks.cli", "train", str(GROKKING), *TINY, *steps,
               f"out_dir={tmp_path / 'b'}", "--no-progress"]
    # The same number of threads as this process (conftest's), or float sums could round apart.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tiny(tmp_path / "b", *steps).run_dir
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # kill it past its 4th resumable checkpoint
        table = run_dir / "metrics.csv"
        if table.exists() and table.read_text().count("\n") > 230:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed: make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(pd.read_csv(run_dir / "metrics.csv"))
    assert (run_dir / ".lock").exists()  # a stale lock, left by the killed process

    assert main(["train", str(GROKKING), *TINY, *steps, f"out_dir={tmp_path / 'b'}", "--resume",
                 "--no-progress"]) == 0
    resumed = load_run(run_dir)
    assert 200 < killed_at < 1500
    assert_same_run(reference, resumed)
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / ".lock").exists()


def test_resume_before_any_resumable_checkpoint_starts_over(tmp_path):
    config = tiny(tmp_path, "max_steps=30", "checkpoints.resume_every=1000")
    run_dir = train(config, progress=False)
    (run_dir / "last.ckpt").unlink()
    meta = (run_dir / "meta.json").read_text().replace('"finished": true', '"finished": false')
    (run_dir / "meta.json").write_text(meta)
    reference = load_run(train(tiny(tmp_path / "ref", "max_steps=30", "checkpoints.resume_every=1000"),
                               progress=False))
    assert_same_run(reference, load_run(train(config, resume=True, progress=False)))


def test_a_second_process_on_the_same_run_is_refused(tmp_path, capsys):
    config = tiny(tmp_path, "max_steps=10")
    run_dir = train(config, progress=False)
    meta = (run_dir / "meta.json").read_text().replace('"finished": true', '"finished": false')
    (run_dir / "meta.json").write_text(meta)
    with RunLock(run_dir):  # held by this (live) process
        assert main(["train", str(GROKKING), *TINY, "max_steps=10", f"out_dir={tmp_path}", "--resume"]) == 2
        err = capsys.readouterr().err
        assert "is in use by another process" in err and err.count("\n") == 1
    assert not (run_dir / ".lock").exists()


def test_load_run_lists_only_complete_checkpoints_and_names_bad_files(tmp_path):
    run = load_run(train(tiny(tmp_path, "max_steps=20"), progress=False))
    (run.path / "series" / ".step_000030.safetensors.tmp").write_bytes(b"half a file")
    assert run.steps == [0, 20]
    bad = run.path / "series" / "step_000020.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(ToytasksError, match="step_000020.safetensors: unreadable checkpoint"):
        run.model_at(20)


def test_checkpoint_of_another_model_config_is_refused(tmp_path):
    small = load_run(train(tiny(tmp_path / "a", "max_steps=5"), progress=False))
    wide = load_run(train(tiny(tmp_path / "b", "max_steps=5", "model.d_mlp=96"), progress=False))
    (small.path / "series" / "step_000005.safetensors").write_bytes(
        (wide.path / "series" / "step_000005.safetensors").read_bytes())
    with pytest.raises(ToytasksError, match="step_000005.safetensors: does not fit this run's model config"):
        small.model_at(5)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_resumable_checkpoint_never_unpickles_code(tmp_path, capsys):
    config = tiny(tmp_path, "max_steps=10")
    run_dir = train(config, progress=False)
    meta = (run_dir / "meta.json").read_text().replace('"finished": true', '"finished": false')
    (run_dir / "meta.json").write_text(meta)
    marker = tmp_path / "pwned"
    torch.save({"global_step": 5, "payload": _Payload(marker)}, run_dir / "last.ckpt")
    assert main(["train", str(GROKKING), *TINY, "max_steps=10", f"out_dir={tmp_path}", "--resume"]) == 2
    assert "last.ckpt: cannot resume" in capsys.readouterr().err
    assert not marker.exists()
    (run_dir / "last.ckpt").write_bytes(b"\x00garbage")
    assert main(["train", str(GROKKING), *TINY, "max_steps=10", f"out_dir={tmp_path}", "--resume"]) == 2
    assert "last.ckpt: cannot resume" in capsys.readouterr().err


def _nan_at(step, monkeypatch):
    """Make the training loss NaN the first time `step` is trained."""
    score, calls = OneRun.score, []

    def patched(self, batch, shared=True):
        loss, acc = score(self, batch, shared)
        if torch.is_grad_enabled():  # a training step (evaluations run without gradients)
            calls.append(len(calls))
            if calls[-1] == step:  # the step's first try
                return loss * float("nan"), acc
        return loss, acc

    monkeypatch.setattr(OneRun, "score", patched)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_at(25, monkeypatch)
    assert main(["train", str(GROKKING), *TINY, "max_steps=60", f"out_dir={tmp_path}", "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite training loss at step 25" in err
    assert "step_000020.safetensors" in err
    run = load_run(tiny(tmp_path, "max_steps=60").run_dir)
    assert run.steps == [0, 20]
    assert all(torch.isfinite(v).all() for v in run.model_at(20).state_dict().values())


def test_nan_loss_can_be_skipped(tmp_path, monkeypatch):
    _nan_at(25, monkeypatch)
    run = load_run(train(tiny(tmp_path, "max_steps=60", "on_nonfinite=skip"), progress=False))
    m = run.metrics.set_index("step")
    assert run.steps[-1] == 60 and m.loc[60, "train/skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in run.model_at(60).state_dict().values())


def test_same_config_and_seed_give_identical_tables(tmp_path):
    a = train(tiny(tmp_path / "a", "max_steps=40"), progress=False)
    b = train(tiny(tmp_path / "b", "max_steps=40"), progress=False)
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    c = train(tiny(tmp_path / "c", "max_steps=40", "seed=1"), progress=False)
    assert (a / "metrics.csv").read_bytes() != (c / "metrics.csv").read_bytes()
