"""Sweeps: grid expansion, --list / --index, and re-runs that skip, resume and report failures."""
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS
from test_train import _stop_at
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.storage import RunLock
from toytasks.sweep import load_sweep

TINY = {"task.p": 7, "model.d_model": 16, "model.d_head": 4, "model.d_mlp": 32, "checkpoints.every": 5,
        "checkpoints.resume_every": 10, "log_every": 5, "max_steps": 20, "measures.fourier": None}


def write_sweep(tmp_path, grid: str, overrides=TINY, name="wd_sweep", extra=""):
    base = os.path.relpath(CONFIGS / "grokking.yaml", tmp_path)
    fixed = ", ".join(f"{k}: {'null' if v is None else v}" for k, v in {**overrides, "out_dir": tmp_path / "out"}.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"base: {base}\noverrides: {{{fixed}}}\ngrid:\n{grid}{extra}")
    return path


def test_grid_expands_into_resolved_configs_in_order(tmp_path):
    path = write_sweep(tmp_path, "  optim.weight_decay: [0.3, 1]\n  seed: [0, 1, 2]\n")
    sweep = load_sweep(path, ["optim.lr=3e-3"])
    assert [p.values for p in sweep.points] == [{"optim.weight_decay": wd, "seed": s} for wd in (0.3, 1) for s in (0, 1, 2)]
    for point in sweep.points:
        c = point.config
        assert (c.optim.weight_decay, c.seed) == (point.values["optim.weight_decay"], point.values["seed"])
        assert c.optim.lr == 3e-3 and c.task.p == 7 and "fourier" not in c.measures  # command line and fixed overrides
        assert c.model.d_mlp == 32 and c.optim.betas == (0.9, 0.98)  # the rest from the base config
        assert c.experiment == "wd_sweep" and c.run_dir.parent == tmp_path / "out" / "wd_sweep"
        # The same config as `toytasks train` with the point's overrides: the same run directory.
        by_hand = load_config(CONFIGS / "grokking.yaml", [f"{k}={'null' if v is None else v}" for k, v in TINY.items()]
                              + [f"out_dir={tmp_path / 'out'}", "experiment=wd_sweep", "optim.lr=3e-3",
                                 f"optim.weight_decay={c.optim.weight_decay}", f"seed={c.seed}"])
        assert by_hand == c and by_hand.run_dir == c.run_dir
    assert len({p.config.run_dir for p in sweep.points}) == 6


def test_list_and_index_agree_with_the_expansion(tmp_path, capsys):
    # Each point is an ensemble of two seeds: the grid varies the learning rate only.
    path = write_sweep(tmp_path, "  optim.lr: [0.001, 0.003]\n", overrides={**TINY, "seeds": "[0, 1]"})
    sweep = load_sweep(path)
    assert main(["sweep", str(path), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2" and len(lines) == 3
    for line, point in zip(lines[1:], sweep.points):
        index, status, run_dir, label = line.split("\t")
        assert (int(index), status, label) == (point.index, "new", point.label)
        assert run_dir == f"{point.run_dirs[0]} (+1 seeds)"

    assert main(["sweep", str(path), "--index", "1", "--no-progress"]) == 0
    printed = [line[5:] for line in capsys.readouterr().out.splitlines() if line.startswith("run: ")]
    assert printed == [str(d) for d in sweep.points[1].run_dirs]
    assert [load_run(d).config.seed for d in printed] == [0, 1] and load_run(printed[0]).config.optim.lr == 0.003
    assert main(["sweep", str(path), "--list"]) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["new", "finished"]
    assert main(["sweep", str(path), "--index", "1"]) == 0  # finished: nothing to do
    assert "is finished" in capsys.readouterr().out


def test_rerun_skips_finished_and_resumes_interrupted(tmp_path, capsys):
    path = write_sweep(tmp_path, "  seed: [0, 1]\n")
    sweep = load_sweep(path)
    first, second = (p.config.run_dir for p in sweep.points)
    for index in ("0", "1"):  # as an array job would: each point alone
        assert main(["sweep", str(path), "--index", index, "--no-progress"]) == 0
    # Point 1 is interrupted at step 10 (its finished copy is kept to compare with).
    shutil.copytree(second, tmp_path / "uninterrupted")
    shutil.rmtree(second)
    _stop_at(sweep.points[1].config, 10)
    untouched = (first / "metrics.csv").stat().st_mtime_ns
    before_resume = (second / "series/step_000005.safetensors").stat().st_mtime_ns
    capsys.readouterr()

    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "[1/2] finished, skipped" in out and "[2/2] resume" in out and "[2/2] done" in out
    assert out.strip().splitlines()[-1] == "sweep wd_sweep: 2 points, 1 already finished, 1 trained now, 0 failed"
    assert (first / "metrics.csv").stat().st_mtime_ns == untouched
    # Resumed from step 10, not restarted; the same result as the uninterrupted run. (To float
    # tolerance only: the worker process runs on another number of threads than this one.)
    assert (second / "series/step_000005.safetensors").stat().st_mtime_ns == before_resume
    resumed, reference = load_run(second), load_run(tmp_path / "uninterrupted")
    assert resumed.steps == reference.steps
    pd.testing.assert_frame_equal(resumed.metrics, reference.metrics, rtol=1e-5, atol=1e-6)
    for step in resumed.steps:
        a, b = (load_file(str(r.path / f"series/step_{step:06d}.safetensors")) for r in (resumed, reference))
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


@pytest.mark.slow  # about 30 s: four worker processes, each importing torch and Lightning
def test_parallel_sweep_runs_every_point_and_names_the_failed_one(tmp_path, capsys):
    path = write_sweep(tmp_path, "  seed: [0, 1, 2]\n")
    sweep = load_sweep(path)
    run_dirs = [p.config.run_dir for p in sweep.points]
    run_dirs[1].mkdir(parents=True)
    with RunLock(run_dirs[1]):  # held by this process: point 1's worker cannot train it
        assert main(["sweep", str(path), "-j", "2"]) == 1
    out = capsys.readouterr().out
    assert "[2/3] FAILED (exit 2)" in out and "is in use by another process" in out
    assert out.strip().splitlines()[-1].endswith("2 trained now, 1 failed: point 1 (seed=1)")
    assert [load_run(d).steps[-1] for d in (run_dirs[0], run_dirs[2])] == [20, 20]
    for point in sweep.points:  # every point's resolved config was written before training
        assert load_config(point.config.run_dir / "config.yaml") == point.config

    assert main(["sweep", str(path), "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and "[2/3] start" in out
    assert load_run(run_dirs[1]).steps[-1] == 20


@pytest.mark.parametrize("text, args, message", [
    ("base: {base}\ngrid: {{seed: [0]}}\ncolour: red\n", [], "colour: unknown key; allowed: base, experiment"),
    ("base: {base}\ngrid: {{}}\n", [], "grid: is required, a mapping"),
    ("base: {base}\ngrid: {{seed: 3}}\n", [], "grid.seed: expected a non-empty list of values, got 3"),
    ("base: {base}\ngrid: {{seed: []}}\n", [], "grid.seed: expected a non-empty list"),
    ("base: {base}\ngrid: {{optim.colour: [1]}}\n", [], "point 0 (optim.colour=1): optim.colour: unknown key"),
    ("base: {base}\ngrid: {{optim.lr: [0.1, -1]}}\n", [], "point 1 (optim.lr=-1): optim.lr: must be positive"),
    ("base: {base}\ngrid: {{seed: [0, 0]}}\n", [], "points 0 and 1 are the same run"),
    ("base: {base}\noverrides: [max_steps=3]\ngrid: {{seed: [0]}}\n", [], "overrides: expected a mapping"),
    ("base: nowhere.yaml\ngrid: {{seed: [0]}}\n", [], "nowhere.yaml: config file not found"),
    ("grid: {{seed: [0]}}\n", [], "base: is required"),
    ("base: {base}\ngrid: {{seed: [0, 1]}}\n", ["--index", "2"], "--index 2: "),
    ("base: {base}\ngrid: {{seed: [0, 1]}}\n", ["task.p=1"], "point 0 (seed=0): task.p: must be at least 2"),
    ("[1, 2]\n", [], "expected a mapping"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, text, args, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text.format(base=os.path.relpath(CONFIGS / "grokking.yaml", tmp_path)))
    assert main(["sweep", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_missing_sweep_file(capsys):
    assert main(["sweep", "no/such/sweep.yaml", "--list"]) == 2
    assert "no/such/sweep.yaml: sweep file not found" in capsys.readouterr().err


def test_plot_of_a_sweep_directory(tmp_path, capsys):
    """A sweep of ensembles (2 learning rates x 2 seeds, tiny induction) and its summary figure."""
    base = os.path.relpath(CONFIGS / "induction_cpu.yaml", tmp_path)
    path = tmp_path / "lr_sweep.yaml"
    path.write_text(f"base: {base}\noverrides: {{out_dir: {tmp_path / 'out'}, seeds: [0, 1], max_steps: 10, "
                    "task.vocab: 12, task.half: 3, model.d_model: 16, model.d_head: 4, batch_size: 8, "
                    "measures.heads.n_sequences: 8, checkpoints.every: 5}\ngrid: {optim.lr: [0.001, 0.01]}\n")
    for index in ("0", "1"):
        assert main(["sweep", str(path), "--index", index, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "out" / "lr_sweep")]) == 0
    png, csv = (Path(line) for line in capsys.readouterr().out.split())
    assert png.name == "sweep.png" and png.stat().st_size > 10_000
    table = pd.read_csv(csv)
    assert list(table.columns) == ["run", "optim.lr", "seed", "finished", "headline"] and len(table) == 4
    assert table["finished"].all()
    for _, row in table.iterrows():  # the final best induction score of each run
        assert row["headline"] == load_run(row["run"]).metrics["heads/induction_max"].dropna().iloc[-1]


def test_grokking_step_is_the_first_step_at_test_accuracy_099():
    from toytasks.phases import grokking_step

    metrics = pd.DataFrame({"step": [0, 1, 2, 3, 4], "val/acc": [0.1, 0.5, float("nan"), 0.995, 0.98]})
    assert grokking_step(metrics) == 3
    assert grokking_step(metrics.iloc[:3]) is None
