"""The edges of a run under real faults (issue 19): processes killed at every write of a run's end,
SIGTERM and Ctrl-C during training and to a sweep, a write that fails as on a full disk.

All of it runs in one driver process (tests/fault_driver.py), which forks a child per command so
that a case costs a tiny run, not an interpreter start; the sweep's worker is the one extra
interpreter. Slow: the whole file takes about 60 s of CPU (see the README's Tests section).
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    # One thread in every child: runs split between processes then add up in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_driver.py"), str(work)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind, files", [
    # single: the last series file, metrics.csv twice (its last row; the end-of-run columns of after_training),
    # phases.json, last.ckpt, meta.json. Ensemble: each of those per seed, last.ckpt.next then last.ckpt.
    ("end_single", 6), ("end_ensemble", 14)])
def test_a_kill_at_any_write_of_a_runs_end_resumes_to_the_same_files(faults, kind, files):
    result = faults[kind]
    assert len(result["cases"]) == 2 * files  # SIGKILLed before and after each rename
    assert not result["problems"], "\n".join(result["problems"])


@pytest.mark.parametrize("kind, code, name", [("sigterm", 143, "SIGTERM"), ("sigint", 130, "Ctrl-C")])
def test_a_signal_saves_a_resumable_checkpoint_and_exits_with_its_status(faults, kind, code, name):
    result = faults[kind]
    assert result["exit"] == code
    assert len(result["stderr"]) == 1, result["stderr"]
    line = result["stderr"][0]
    assert line.startswith(f"error: interrupted by {name} at step {result['stopped_at']}, where a resumable checkpoint")
    assert line.endswith(" max_steps=300 checkpoints.every=50 checkpoints.resume_every=1000 "
                         f"out_dir={result['out_dir']} --no-progress --resume")  # the whole command
    assert 50 <= result["stopped_at"] < 300  # stopped where the signal came, not at a scheduled checkpoint
    assert result["resume_exit"] == 0
    assert result["differences"] == []  # every file as an uninterrupted run's


def test_a_failing_write_is_one_line_leaves_no_temporary_file_and_resumes(faults):
    result = faults["disk"]
    assert result["exit"] == 2 and len(result["stderr"]) == 1, result["stderr"]
    assert "cannot write (File too large" in result["stderr"][0]
    assert result["temporaries"] == []
    assert result["resume_exit"] == 0


def test_ctrl_c_on_a_sweep_stops_its_worker_with_a_checkpoint(faults):
    result = faults["sweep"]
    assert result["exit"] == 130
    output = result["output"]  # stdout and stderr
    assert any("] interrupted (SIGTERM) after" in line for line in output), output  # the worker, told by the sweep
    errors = [line for line in output if line.startswith("error: ")]
    assert errors == ["error: sweep sweep interrupted by Ctrl-C: 1 point stopped with a resumable checkpoint; "
                      "running the same command again resumes them"]
    summary = output[-1 if output[-1] != errors[0] else -2]
    assert summary == "sweep sweep: 2 points, 0 already finished, 0 trained now, 0 failed, 1 interrupted: point 0 (seed=0)"
    statuses = [line.split("\t")[1] for line in result["list"][1:]]
    assert statuses == ["unfinished", "new"]  # point 1 never started
    assert 50 <= result["checkpoint_steps"][0] < 3000 and result["checkpoint_steps"][1] is None
