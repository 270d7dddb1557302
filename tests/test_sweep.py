"""Sweeps: grid expansion, --list / --index, and re-runs that skip, resume and report failures."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, ROOT
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


def test_arms_are_crossed_with_the_grid(tmp_path):
    path = write_sweep(tmp_path, "  optim.lr: [0.001, 0.003]\n", extra=(
        "arms:\n  baseline: {}\n  orthograd: {optim.orthograd: true, optim.weight_decay: 0}\n"
        "  ema: {optim.grokfast: {filter: ema, lamb: 2.0}}\n"))
    sweep = load_sweep(path)
    assert [p.values for p in sweep.points] == [{"arm": arm, "optim.lr": lr} for arm in ("baseline", "orthograd", "ema")
                                                for lr in (0.001, 0.003)]
    assert [p.label for p in sweep.points][2] == "arm=orthograd optim.lr=0.001"
    configs = [p.config for p in sweep.points]
    assert [(c.optim.orthograd, c.optim.weight_decay) for c in configs[:4]] == [(False, 1.0)] * 2 + [(True, 0.0)] * 2
    assert configs[4].optim.grokfast.filter == "ema" and configs[4].optim.lr == 0.001
    assert all(c.task.p == 7 for c in configs)  # the fixed overrides reach every arm
    # With arms, the grid may be left out: one point per arm.
    only_arms = tmp_path / "arms_only.yaml"
    only_arms.write_text(path.read_text().replace("grid:\n  optim.lr: [0.001, 0.003]\n", ""))
    assert [p.values for p in load_sweep(only_arms).points] == [{"arm": a} for a in ("baseline", "orthograd", "ema")]
    # The grid may place the arms (and choose some): here every arm at the first learning rate first.
    placed = tmp_path / "placed.yaml"
    placed.write_text(path.read_text().replace("  optim.lr: [0.001, 0.003]\n",
                                               "  optim.lr: [0.001, 0.003]\n  arm: [ema, baseline]\n"))
    assert [p.values for p in load_sweep(placed).points] == [{"optim.lr": lr, "arm": arm} for lr in (0.001, 0.003)
                                                             for arm in ("ema", "baseline")]
    assert load_sweep(placed).points[0].config.optim.grokfast.filter == "ema"


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
    for point in (sweep.points[0], sweep.points[2]):  # their resolved configs were written before training;
        assert load_config(point.config.run_dir / "config.yaml") == point.config  # point 1's is its holder's to write

    assert main(["sweep", str(path), "-j", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and "[2/3] start" in out
    assert load_run(run_dirs[1]).steps[-1] == 20
    assert load_config(run_dirs[1] / "config.yaml") == sweep.points[1].config


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
    ("base: {base}\narms: [a, b]\n", [], "arms: expected a mapping of arm names"),
    ("base: {base}\narms: {{a: 3}}\n", [], "arms.a: expected a mapping of dotted keys to values, got 3"),
    ("base: {base}\narms: {{a: {{}}, b: {{loss: mse}}}}\n", [], "point 1 (arm=b): loss: must be one of softmax, stablemax"),
    ("base: {base}\narms: {{a: {{}}, b: {{}}}}\n", [], "points 0 and 1 are the same run"),
    ("base: {base}\narms: {{a: {{}}}}\ngrid: {{arm: [a, c]}}\n", [], "grid.arm: 'c' is not one of the sweep's arms (a)"),
    ("base: {base}\ngrid: {{arm: [a]}}\n", [], "grid.arm: 'a' is not one of the sweep's arms (it names none)"),
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
    png, csv, summary = (Path(line) for line in capsys.readouterr().out.split())
    assert png.name == "sweep.png" and png.stat().st_size > 10_000
    per_lr = pd.read_csv(summary)
    assert list(per_lr.columns[:3]) == ["optim.lr", "runs", "reached"] and list(per_lr["runs"]) == [2, 2]
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


def _arms_table():
    """A run table as run_table builds it, for a sweep of three arms x 3 seeds (made by hand)."""
    nan = float("nan")
    rows = []
    arms = {"base": {"optim.weight_decay": 1.0, "optim.orthograd": False, "optim.grokfast": None},
            "ortho": {"optim.weight_decay": 0.0, "optim.orthograd": True, "optim.grokfast": None},
            "ema": {"optim.weight_decay": 1.0, "optim.orthograd": False, "optim.grokfast": nan,
                    "optim.grokfast.filter": "ema", "optim.grokfast.lamb": 2.0, "optim.grokfast.alpha": 0.98,
                    "optim.grokfast.window": 100.0}}
    steps = {"base": [600.0, 1000.0, nan], "ortho": [nan, nan, 900.0], "ema": [300.0, 200.0, 250.0]}
    for arm, values in arms.items():
        for seed, step in enumerate(steps[arm]):
            rows.append({"run": f"{arm}-{seed}", "seed": seed, "optim.lr": 0.005, **values, "finished": True,
                         "headline": step, "memorisation_end": 40 + seed})
    table = pd.DataFrame(rows)
    table.attrs["config_columns"] = ["run", "seed", "optim.lr", "optim.weight_decay", "optim.grokfast",
                                     "optim.grokfast.filter", "optim.grokfast.lamb", "optim.grokfast.alpha",
                                     "optim.grokfast.window", "optim.orthograd"]
    table.attrs["headline"] = "grokking step"
    return table


def test_median_counts_runs_that_never_reached_it_as_later_than_any():
    from toytasks.analysis.figures import median_reached

    nan = float("nan")
    assert median_reached(pd.Series([100.0, 200.0, nan])) == 200
    assert median_reached(pd.Series([100.0, 300.0])) == 200
    assert pd.isna(median_reached(pd.Series([100.0, nan, nan])))  # the median run never grokked
    assert pd.isna(median_reached(pd.Series([100.0, nan])))


def test_a_sweep_of_arms_is_drawn_as_categories_named_by_what_they_change():
    from toytasks.analysis.figures import is_categorical, plot_sweep, settings, swept_columns, sweep_summary

    table = _arms_table()
    swept = swept_columns(table)
    assert is_categorical(table, swept)
    names, order, colours = settings(table, swept)
    # Switches first, then numbers; values at their defaults (weight decay 1, Grokfast's alpha) are left out.
    assert order == ["baseline", "grokfast.filter=ema\ngrokfast.lamb=2", "orthograd\nweight_decay=0"]
    assert len(set(colours.values())) == 3
    summary = sweep_summary(table)
    assert list(summary["setting"]) == [name.replace("\n", " ") for name in order]
    assert list(summary["reached"]) == [2, 3, 1]
    assert summary["median"].tolist()[:2] == [1000, 250] and pd.isna(summary["median"].iloc[2])
    assert list(summary["memorisation_median"]) == [41, 41, 41]
    fig = plot_sweep(table)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == order
    assert "3 run(s) never reached it" in fig.axes[0].get_title()


def test_list_into_a_closed_pipe_ends_quietly(tmp_path):
    """`toytasks sweep FILE --list | head`: once the reader has gone, no BrokenPipeError traceback and
    exit 0 (`true` leaves before anything is written, so the write always finds the pipe closed)."""
    sweep = ROOT / "configs" / "sweeps" / "grokking_interventions.yaml"
    command = f"set -o pipefail; {sys.executable} -m toytasks.cli sweep {sweep} --list out_dir={tmp_path} | true"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.returncode, done.stderr) == (0, "")
