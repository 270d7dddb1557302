"""Seed ensembles: N seeds in one process give each seed's single run, to float tolerance.

Tolerance: rtol 1e-5, atol 1e-6 on float32 weights and the float64 metrics computed from them.
On the CPU we found two sums that add up in another order: the batched (vmapped) matmul giving
the unembedding's gradient over a full batch of hundreds of examples (about 1e-7 relative per
step, 1e-7 absolute on the weights after 30 steps), and the logged `weights/sq_norm` (a batched
norm, 1e-7 relative). With mini-batches (induction, brackets) the weights matched their single
runs bit for bit on our machine.
"""
import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, TINY_RUNS
from toytasks import load_run
from toytasks.cli import main
from toytasks.config import load_config
from toytasks.training import train, train_runs
from toytasks.training.replicas import StackedRuns

GROKKING = CONFIGS / "grokking.yaml"
INDUCTION = CONFIGS / "induction_cpu.yaml"
# A sampled task with everything that could couple seeds: mini-batches drawn per seed, a held-out
# batch per seed, warmup, gradient clipping that bites (each seed by its own norm), LayerNorm.
TINY_INDUCTION = ["task.vocab=20", "task.half=4", "model.d_model=16", "model.d_head=4", "batch_size=8",
                  "optim.warmup_steps=5", "optim.grad_clip=0.05", "measures.heads.n_sequences=16",
                  "checkpoints.every=10", "checkpoints.resume_every=10", "log_every=7", "eval_every=5",
                  "optim.schedule=constant"]  # _stop_ensemble_at's shorter max_steps would move a cosine's end
# Mini-batches of a finite task with padding (an attention mask), bidirectional attention, a
# cosine schedule, and the brackets measures.
TINY_BRACKETS = [*TINY_RUNS["brackets"][1], "checkpoints.resume_every=10"]
SEEDS = [0, 1, 2]
TINY_GROKKING = ["task.p=11", "checkpoints.every=10", "checkpoints.resume_every=20", "log_every=7",
                 "model.d_model=32", "model.d_head=8", "model.d_mlp=64"]
CASES = [("grokking", GROKKING, TINY_GROKKING), ("induction", INDUCTION, TINY_INDUCTION),
         ("brackets", CONFIGS / "brackets_cpu.yaml", TINY_BRACKETS)]


def assert_same_run(a, b, exact=False):
    """Two run directories hold the same run: files, series, metrics (and summaries)."""
    a, b = load_run(a), load_run(b)
    assert a.path.name == b.path.name  # the same run_id, from the same config.yaml
    assert a.config == dataclasses.replace(b.config, out_dir=a.config.out_dir)
    assert {p.name for p in a.path.iterdir()} == {p.name for p in b.path.iterdir()}
    assert a.steps == b.steps
    tolerance = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
    for step in a.steps:
        wa, wb = (load_file(str(r.path / f"series/step_{step:06d}.safetensors")) for r in (a, b))
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], **tolerance, msg=f"{key} at step {step}")
    pd.testing.assert_frame_equal(a.metrics, b.metrics, check_exact=exact, **({} if exact else tolerance))
    for summary in ("phases.json", "heads.json"):
        if (a.path / summary).exists():
            assert json.loads((a.path / summary).read_text()) == json.loads((b.path / summary).read_text())


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    """Single runs of seeds 0, 1, 2 of each case."""
    out = tmp_path_factory.mktemp("singles")
    runs = {}
    for name, path, overrides in CASES:
        runs[name] = [train(load_config(path, [*overrides, "max_steps=30", f"out_dir={out}", f"seed={s}"]),
                            progress=False) for s in SEEDS]
    return runs


def test_ensemble_of_full_batch_runs_matches_single_runs(singles, tmp_path, capsys):
    assert main(["train", str(GROKKING), *TINY_GROKKING, "max_steps=30", f"out_dir={tmp_path}",
                 "seeds=[0, 1, 2]", "--no-progress"]) == 0
    printed = [line[5:] for line in capsys.readouterr().out.splitlines() if line.startswith("run: ")]
    assert [p.rsplit("/", 1)[1] for p in printed] == [s.name for s in singles["grokking"]]
    for run_dir, single in zip(printed, singles["grokking"]):
        assert_same_run(run_dir, single)
        meta = json.loads((Path(run_dir) / "meta.json").read_text())
        assert meta["finished"] and meta["ensemble"] == SEEDS
        assert "seeds" not in (Path(run_dir) / "config.yaml").read_text()


@pytest.mark.parametrize("name", ["induction", "brackets"])
def test_ensemble_of_mini_batch_runs_matches_single_runs(singles, tmp_path, name):
    _, path, overrides = next(case for case in CASES if case[0] == name)
    config = load_config(path, [*overrides, "max_steps=30", f"out_dir={tmp_path}", f"seeds={SEEDS}"])
    for run_dir, single in zip(train_runs(config, progress=False), singles[name]):
        assert_same_run(run_dir, single)


def test_killed_ensemble_resumes_and_each_seed_resumes_alone(singles, tmp_path):
    """An ensemble stopped at step 10 of 30: seed 0 resumes alone from its own last.ckpt, then
    the ensemble command with --resume skips it and finishes seeds 1 and 2 together."""
    full = load_config(INDUCTION, [*TINY_INDUCTION, "max_steps=30", f"out_dir={tmp_path}", f"seeds={SEEDS}"])
    _stop_ensemble_at(full, 10)
    seed0 = full.members[0]
    train(seed0, resume=True, progress=False)
    before = (seed0.run_dir / "metrics.csv").read_bytes()
    run_dirs = train_runs(full, resume=True, progress=False)
    assert (seed0.run_dir / "metrics.csv").read_bytes() == before  # finished: left alone
    for run_dir, single in zip(run_dirs, singles["induction"]):
        assert_same_run(run_dir, single)


def test_ensemble_refuses_finished_and_unfinished_runs_without_flags(tmp_path, capsys):
    args = ["train", str(GROKKING), *TINY_GROKKING, "max_steps=5", f"out_dir={tmp_path}", "seeds=[3, 4]",
            "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # nothing left to train
    assert "run: " in capsys.readouterr().out


def test_nonfinite_loss_in_one_seed_stops_the_ensemble_and_names_it(tmp_path, monkeypatch, capsys):
    score, steps = StackedRuns.score, []

    def nan_in_seed_1(self, batch, shared):
        loss, acc = score(self, batch, shared)
        if torch.is_grad_enabled():  # a training step, not an evaluation
            steps.append(len(steps))
            if steps[-1] == 12:
                loss = loss * torch.tensor([1.0, float("nan")], dtype=loss.dtype)
        return loss, acc

    monkeypatch.setattr(StackedRuns, "score", nan_in_seed_1)
    assert main(["train", str(GROKKING), *TINY_GROKKING, "max_steps=30", f"out_dir={tmp_path}", "seeds=[0, 1]",
                 "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite training loss at step 12 in seed 1" in err
    config = load_config(GROKKING, [*TINY_GROKKING, "max_steps=30", f"out_dir={tmp_path}", "seeds=[0, 1]"])
    good, bad = (json.loads((m.run_dir / "meta.json").read_text()) for m in config.members)
    assert "failed" in bad and "failed" not in good and not good["finished"]
    assert load_run(config.members[1].run_dir).steps == [0, 10]


@pytest.mark.parametrize("override, message", [
    ("seeds=[]", "seeds: must list at least one seed"),
    ("seeds=[1, 1]", "seeds: must be distinct"),
    ("seeds=3", "seeds: expected a list"),
    ("on_nonfinite=skip", "on_nonfinite: an ensemble (seeds) supports only `stop`"),
    ("trainer.devices=2", "trainer.devices: an ensemble (seeds) trains on one device"),
])
def test_bad_ensemble_configs_are_one_line_errors(override, message, capsys):
    extra = [] if override.startswith("seeds") else ["seeds=[0, 1]"]
    assert main(["train", str(GROKKING), *extra, override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def _stop_ensemble_at(config, step):
    """Train the first `step` steps of an ensemble and leave its seeds unfinished, as a kill would."""
    short = dataclasses.replace(config, max_steps=step)
    for member, run_dir in zip(config.members, train_runs(short, progress=False)):
        shutil.move(run_dir, member.run_dir)
        (member.run_dir / "config.yaml").write_text(member.to_yaml())
        meta = json.loads((member.run_dir / "meta.json").read_text())
        (member.run_dir / "meta.json").write_text(json.dumps({**meta, "finished": False}))
        assert (member.run_dir / "last.ckpt").exists()
