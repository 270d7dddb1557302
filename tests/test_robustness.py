"""Crash safety, exact resume after SIGKILL, locks, safe loading, numerical faults, determinism."""
import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, ROOT
from toytasks import load_run, load_runs
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.errors import ToytasksError, ToytasksWarning
from toytasks.training.replicas import OneRun
from toytasks.storage import RunBusy, RunLock
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


@pytest.mark.slow  # about 2 minutes: a real process killed mid-run, then resumed
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


# --- the edges of a run (issue 19); the tests that kill processes are in test_faults.py ----------

CLI = [str(GROKKING), *TINY]


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _unfinished(run_dir):
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "finished": False}))


def _forked(body):
    """body() in a forked child that touches no tensor (safe after fork); returns its PID."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def test_the_lock_is_held_while_its_holder_lives_and_released_when_it_dies(tmp_path):
    ready_r, ready_w = os.pipe()

    def hold():
        with RunLock(tmp_path):
            os.write(ready_w, b"x")
            time.sleep(60)

    pid = _forked(hold)
    os.read(ready_r, 1)
    (tmp_path / ".lock").write_text("")  # emptied: its owner is alive, so it still holds it
    with pytest.raises(RunBusy, match="is in use by another process"):
        RunLock(tmp_path).__enter__()
    os.kill(pid, signal.SIGKILL)  # dies holding it: the OS releases it, nothing to take over
    os.waitpid(pid, 0)
    with RunLock(tmp_path):
        assert "pid" in (tmp_path / ".lock").read_text()
    assert not (tmp_path / ".lock").exists()


def test_racing_processes_never_hold_the_lock_together(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")

    def work():
        done = 0
        while done < 25:
            try:
                with RunLock(tmp_path):  # read, pause, write: a second holder would lose an increment
                    value = int(counter.read_text())
                    time.sleep(0.001)
                    counter.write_text(str(value + 1))
                done += 1
            except RunBusy:
                time.sleep(0.0005)

    pids = [_forked(work) for _ in range(4)]
    for pid in pids:
        os.waitpid(pid, 0)
    assert int(counter.read_text()) == 100


def test_overwrite_refuses_a_run_that_is_in_use(tmp_path, capsys):
    run_dir = train(tiny(tmp_path, "max_steps=10"), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with RunLock(run_dir):  # a live trainer
        assert main(["train", *CLI, "max_steps=10", f"out_dir={tmp_path}", "--overwrite", "--no-progress"]) == 2
        _one_line_error(capsys, "is in use by another process")
        assert main(["measure", str(run_dir), "--no-progress"]) == 2  # it rewrites metrics.csv: the lock too
        _one_line_error(capsys, "is in use by another process")
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    assert main(["train", *CLI, "max_steps=10", f"out_dir={tmp_path}", "--overwrite", "--no-progress"]) == 0


def test_every_file_follows_the_umask(tmp_path):
    old = os.umask(0o002)  # group-writable: neither the usual 0644 nor safetensors' 0600
    try:
        run_dir = train(tiny(tmp_path, "max_steps=10"), progress=False)
        assert main(["plot", str(run_dir)]) == 0
    finally:
        os.umask(old)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.parent.name == "series" for p in files) and any(p.suffix == ".png" for p in files)
    modes = {str(p.relative_to(run_dir)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o664"}, modes


def test_nothing_planted_in_a_run_directory_redirects_a_write(tmp_path, capsys):
    run_dir = train(tiny(tmp_path / "out", "max_steps=10"), progress=False)
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("metrics.csv", "phases.json", "meta.json", "config.yaml"):  # the old, predictable names
        (victim / name).write_text("precious")
        (run_dir / f".{name}.tmp").symlink_to(victim / name)
    for name in ("plots", "analysis"):
        (victim / name).mkdir()
        (run_dir / name).symlink_to(victim / name)

    assert main(["measure", str(run_dir), "--no-progress"]) == 0
    assert main(["plot", str(run_dir)]) == 2
    _one_line_error(capsys, "plots: is a symbolic link or not a directory")
    with pytest.raises(ToytasksError, match="analysis: is a symbolic link"):
        load_run(run_dir).map(lambda model: 1.0, "one", progress=False)
    _unfinished(run_dir)
    (run_dir / "tb").rename(tmp_path / "tb")
    (run_dir / "tb").symlink_to(tmp_path / "tb")
    assert main(["train", *CLI, "max_steps=10", f"out_dir={tmp_path / 'out'}", "--resume", "--no-progress"]) == 2
    _one_line_error(capsys, "tb is a symbolic link")
    assert main(["train", *CLI, "max_steps=10", f"out_dir={tmp_path / 'out'}", "--overwrite", "--no-progress"]) == 0

    assert all((victim / name).read_text() == "precious" for name in ("metrics.csv", "phases.json", "meta.json",
                                                                      "config.yaml"))
    assert not any((victim / "plots").iterdir()) and not any((victim / "analysis").iterdir())
    assert not [p for p in run_dir.iterdir() if p.is_symlink()]  # --overwrite removed the links themselves


@pytest.mark.parametrize("config_name, overrides, message", [
    ("grokking", ["experiment=.."], "experiment: must be a name of 1 to 100 printable characters"),
    ("grokking", ["experiment=a/b"], "experiment: must be a name"),
    ("grokking", ["experiment=" + "x" * 300], "experiment: must be a name"),
    ("..", [], "experiment: must be a name"),  # a config file named `...yaml`
])
def test_a_run_directory_stays_inside_out_dir(tmp_path, capsys, config_name, overrides, message):
    config = tmp_path / "configs" / f"{config_name}.yaml"
    config.parent.mkdir()
    config.write_text(GROKKING.read_text())
    assert main(["train", str(config), *TINY, "max_steps=5", f"out_dir={tmp_path / 'out'}", *overrides]) == 2
    _one_line_error(capsys, message)
    assert [p.name for p in tmp_path.iterdir()] == ["configs"]  # nothing written, in out_dir or above it


def test_a_run_directory_config_resumes_that_directory_from_anywhere(tmp_path, monkeypatch, capsys):
    from test_train import _stop_at

    steps = ["max_steps=20", "checkpoints.every=10", "checkpoints.resume_every=10"]  # it stops at a series step
    reference = train(tiny(tmp_path / "reference", *steps), progress=False)
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    config = tiny("checkpoints", *steps)  # the default, relative out_dir
    _stop_at(config, 10)
    run_dir = here / config.run_dir
    copy = tmp_path / "copy" / "grokking" / run_dir.name
    shutil.copytree(run_dir, copy)

    monkeypatch.chdir(elsewhere)
    assert main(["train", str(run_dir / "config.yaml"), "--resume", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"run: {run_dir}"
    assert not (elsewhere / "checkpoints").exists()
    assert_same_run(load_run(reference), load_run(run_dir))

    untouched = (run_dir / "metrics.csv").stat().st_mtime_ns
    assert main(["resume", str(copy), "--no-progress"]) == 0  # a copy resumes as itself
    assert_same_run(load_run(reference), load_run(copy))
    assert (run_dir / "metrics.csv").stat().st_mtime_ns == untouched


@contextlib.contextmanager
def read_only(path):
    """`path` read-only for this process, as a read-only mount would make it: chmod binds only
    other users than root, so root gets a read-only bind mount (skipped where it may not mount)."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("root, and no permission to mount: cannot make a directory read-only")
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def test_a_read_only_run_is_analysed_with_its_cache_elsewhere(tiny_runs, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "grokking" / "run"
    shutil.copytree(tiny_runs("grokking"), run_dir)
    # analysis/ already there (an earlier map wrote into it): the write fails at the file, not the folder
    (run_dir / "analysis").mkdir(exist_ok=True)
    monkeypatch.setenv("TOYTASKS_CACHE", str(tmp_path / "cache"))
    with read_only(run_dir):
        with pytest.raises(OSError) as error:
            (run_dir / "probe").write_text("")
        assert error.value.errno in (errno.EROFS, errno.EACCES)
        run = load_run(run_dir)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = run.map(lambda model: model.W_E.norm(), "embed_norm", progress=False)
            monkeypatch.setattr(type(run), "model_at", lambda self, step: pytest.fail("loaded a checkpoint"))
            again = load_run(run_dir).map(lambda model: 0.0, "embed_norm", progress=False)  # from the cache
        ours = [str(w.message) for w in caught if issubclass(w.category, ToytasksWarning)]
        assert len(ours) == 1 and f"{run_dir} is read-only: run.map caches its tables in" in ours[0]
        assert list(first["step"]) == run.steps and again.equals(first)
        assert main(["plot", str(run_dir)]) == 2  # its figures have nowhere to go
        _one_line_error(capsys, "plots: cannot create the directory (Read-only file system"
                        if os.geteuid() == 0 else "plots: cannot create the directory (Permission denied")
        assert main(["train", *CLI, "max_steps=5", f"out_dir={run_dir / 'runs'}"]) == 2  # a read-only out_dir
        _one_line_error(capsys, "runs")
    assert list((tmp_path / "cache" / "analysis").glob("*/embed_norm.csv"))
    assert not (run_dir / "analysis" / "embed_norm.csv").exists()


@pytest.mark.parametrize("damage, file", [
    ("config.yaml", "config.yaml"), ("metrics.csv", "metrics.csv"), ("meta.json", "meta.json"), ("phases.json", None)])
def test_a_broken_run_is_left_out_of_a_set_with_one_warning(tiny_runs, tmp_path, capsys, damage, file):
    runs = tmp_path / "sweep"
    for name in ("grokking", "grokking_wd"):
        shutil.copytree(tiny_runs(name), runs / name)
    broken = runs / "grokking_wd"
    text = (broken / damage).read_text()
    # Cut off half way, inside a line (a failing disk or editor leaves it so; a cut at a line's end
    # of config.yaml can leave valid YAML that nothing can tell from a shorter config).
    half = text.index("\n", len(text) // 2) + 4
    (broken / damage).write_text(text[:half])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = load_runs(runs).summary
    warned = [str(w.message) for w in caught if issubclass(w.category, ToytasksWarning)]
    if file is None:  # nothing reads phases.json back: the summary recomputes the phases
        assert len(summary) == 2 and not warned
        return
    assert list(summary["run"]) == [str(runs / "grokking")]
    assert len(warned) == 1 and warned[0].startswith(f"left out {broken}") and file in warned[0]
    assert main(["plot", str(runs)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: left out") == 1 and "Traceback" not in err


def test_a_sweep_lists_a_point_with_a_damaged_meta_json_as_broken(tmp_path, capsys):
    from test_sweep import write_sweep

    path = write_sweep(tmp_path, "  seed: [0, 1]\n")
    assert main(["sweep", str(path), "--index", "0", "--no-progress"]) == 0
    run_dir = Path(capsys.readouterr().out.split("run: ")[-1].strip())
    (run_dir / "meta.json").write_text('{"finished": tr')
    assert main(["sweep", str(path), "--list"]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["broken", "new"]


def test_damaged_files_of_a_run_are_one_line_errors(tmp_path, capsys):
    args = [*CLI, "max_steps=10", f"out_dir={tmp_path}", "--no-progress"]
    run_dir = train(tiny(tmp_path, "max_steps=10"), progress=False)
    _unfinished(run_dir)
    meta = (run_dir / "meta.json").read_text()
    (run_dir / "meta.json").write_text(meta[:-20])
    assert main(["train", *args, "--resume"]) == 2
    _one_line_error(capsys, "meta.json: corrupted")
    (run_dir / "meta.json").write_text(meta)

    table = (run_dir / "metrics.csv").read_text()
    (run_dir / "metrics.csv").write_text(table[:-4])  # the last line cut short in its last number
    assert main(["train", *args, "--resume"]) == 2
    _one_line_error(capsys, "metrics.csv: damaged (its last line is cut short)")
    (run_dir / "meta.json").write_text(meta.replace('"finished": false', '"finished": true'))  # measure needs it
    assert main(["measure", str(run_dir), "--no-progress"]) == 2
    _one_line_error(capsys, "metrics.csv: damaged")
    with pytest.raises(ToytasksError, match="metrics.csv: damaged"):
        load_run(run_dir).metrics
    lines = table.splitlines(keepends=True)
    (run_dir / "metrics.csv").write_text("".join([*lines[:3], lines[3][:10] + "\n", *lines[4:]]))  # one line cut
    assert main(["measure", str(run_dir), "--no-progress"]) == 2
    _one_line_error(capsys, "metrics.csv: damaged (line 4 has")
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_plot_before_the_first_checkpoint_is_one_line(tmp_path, capsys):
    config = tiny(tmp_path, "max_steps=10")
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "config.yaml").write_text(config.to_yaml())  # a run that has just started
    assert main(["plot", str(config.run_dir)]) == 2
    _one_line_error(capsys, "nothing to plot yet")


BOMB = "[&a [1,1,1,1,1,1,1,1,1],&b [*a,*a,*a,*a,*a,*a,*a,*a,*a],&c [*b,*b,*b,*b,*b,*b,*b,*b,*b]," \
       "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c],&e [*d,*d,*d,*d,*d,*d,*d,*d,*d],*e]"


@pytest.mark.parametrize("config, overrides, message", [
    ("grokking", ["optim.weight_decay=.nan"], "optim.weight_decay: must be a finite number, got nan"),
    ("grokking", ["optim.lr=.inf"], "optim.lr: must be a finite number"),
    ("grokking", ["seed=1" + "0" * 100], f"seed: 1{'0' * 17}...{'0' * 19} is out of range"),  # quoted in 40
    ("grokking", [f"task.p={BOMB}"], "value is not valid YAML (its aliases expand to more than 100,000 values)"),
    ("grokking", ["max_steps=1000000000000"], "max_steps: 1000000000000 makes the run need at least"),
    ("grokking", ["task.p=1000001"], "task.p: 1000001 makes the run need at least"),
    ("grokking", ["model.d_model=10000000"], "model.d_model: 10000000 makes the run need at least"),
    ("induction_cpu", ["batch_size=1000000000"], "batch_size: 1000000000 makes the run need at least"),
    ("induction_cpu", ["seeds=[" + ",".join(map(str, range(5000))) + "]"], "seeds: 5000 seeds makes the run need"),
])
def test_oversized_or_non_finite_input_is_refused_up_front(tmp_path, capsys, config, overrides, message):
    started = time.perf_counter()
    assert main(["train", str(CONFIGS / f"{config}.yaml"), *overrides, f"out_dir={tmp_path}", "--no-progress"]) == 2
    err = _one_line_error(capsys, message)
    assert len(err) < 400 and time.perf_counter() - started < 10  # nothing was allocated, nothing expanded
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_sweep_of_a_million_points_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    path.write_text(f"base: {GROKKING}\ngrid:\n  seed: {list(range(1000))}\n  optim.lr: {[i / 1e4 for i in range(1, 1001)]}\n")
    started = time.perf_counter()
    assert main(["sweep", str(path), "--list"]) == 2
    _one_line_error(capsys, "grid: 1,000,000 points, more than the 10,000 a sweep file may hold")
    assert time.perf_counter() - started < 10
