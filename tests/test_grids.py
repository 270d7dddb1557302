"""Hyperparameter grids as one stacked run: each run equals its single run, to float tolerance.

A grid's runs differ in their learning rate and weight decay (RunsAdamW: torch's AdamW arithmetic
with one value per run) and in what sets their initial weights (seed, model.seed, model.init);
tested, as the seed ensembles are (tests/test_ensemble.py: same tolerance, same reasons), on a
full-batch finite task and on a sampled one with warmup and gradient clipping that bites.
"""
import dataclasses
import json
import shutil

import pytest
import torch

from conftest import CONFIGS
from test_ensemble import GROKKING, INDUCTION, TINY_GROKKING, TINY_INDUCTION, assert_same_run
from toytasks.cli import main
from toytasks.config import ModelConfig, OptimConfig, load_config
from toytasks.errors import ConfigError
from toytasks.groups import differing_field
from toytasks.optim import RunsAdamW, lr_factor, schedule_factors
from toytasks.sweep import load_sweep
from toytasks.training import train, train_members
from toytasks.training.module import ToyTaskModule

GRID = {  # each point's overrides: learning rate, weight decay and initial weights all vary
    "grokking": [["optim.lr=1e-3", "optim.weight_decay=1.0", "seed=0"],
                 ["optim.lr=3e-3", "optim.weight_decay=0.3", "seed=0"],
                 ["optim.lr=1e-3", "optim.weight_decay=0", "seed=1", "model.init=native"]],
    "induction": [["optim.lr=1e-3", "optim.weight_decay=1.0", "seed=0"],
                  ["optim.lr=3e-3", "optim.weight_decay=0.1", "seed=1"],
                  ["optim.lr=3e-4", "optim.weight_decay=0.1", "seed=0", "model.seed=5"]],
}
CASES = {"grokking": (GROKKING, TINY_GROKKING), "induction": (INDUCTION, TINY_INDUCTION)}


def grid_configs(name, out, max_steps=30):
    path, tiny = CASES[name]
    return [load_config(path, [*tiny, f"max_steps={max_steps}", f"out_dir={out}", *point]) for point in GRID[name]]


@pytest.fixture(scope="module")
def singles(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid_singles")
    return {name: [train(config, progress=False) for config in grid_configs(name, out)] for name in GRID}


# --- the optimizer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stacked", [True, False])
def test_runs_adamw_is_torch_adamw_bit_for_bit(stacked):
    """Per run, the same weights, moments and learning rate as torch's AdamW with LambdaLR, on the
    CPU to the last bit, through warmup and a cosine decay."""
    torch.manual_seed(0)
    lrs, wds = ([1e-3, 3e-3, 1e-2], [1.0, 0.0, 0.3]) if stacked else ([3e-3], [0.5])
    runs, max_steps, o = len(lrs), 25, OptimConfig(warmup_steps=5, schedule="cosine")
    schedule = lambda step: lr_factor(step, o.warmup_steps, o.schedule, max_steps)  # noqa: E731
    shapes = [(7, 5), (13,), (3, 4, 6)]
    start = [torch.randn(runs, *s) for s in shapes]
    grads = [[torch.randn(runs, *s) for s in shapes] for _ in range(max_steps)]
    stacked_params = [torch.nn.Parameter(t.clone() if stacked else t[0].clone()) for t in start]
    ours = RunsAdamW(stacked_params, lrs, wds, o.betas, schedule_factors(o, max_steps), stacked=stacked)
    our_schedule = torch.optim.lr_scheduler.LambdaLR(ours, schedule)
    for step in range(max_steps):
        for p, g in zip(stacked_params, grads[step]):
            p.grad = g.clone() if stacked else g[0].clone()
        ours.step()
        our_schedule.step()
    for i in range(runs):
        params = [torch.nn.Parameter(t[i].clone()) for t in start]
        adamw = torch.optim.AdamW(params, lr=lrs[i], weight_decay=wds[i], betas=o.betas)
        schedule_i = torch.optim.lr_scheduler.LambdaLR(adamw, schedule)
        for step in range(max_steps):
            for p, g in zip(params, grads[step]):
                p.grad = g[i].clone()
            adamw.step()
            schedule_i.step()
        for p, q in zip(stacked_params, params):
            assert torch.equal(p[i] if stacked else p, q)
            for key in ("exp_avg", "exp_avg_sq"):
                mine = ours.state[p][key]
                assert torch.equal(mine[i] if stacked else mine, adamw.state[q][key])
            assert torch.equal(ours.state[p]["step"], adamw.state[q]["step"])
        assert ours.learning_rates(our_schedule.last_epoch)[i] == adamw.param_groups[0]["lr"]
        # Its checkpoint for run i is what run i's own optimizer and schedule save.
        optimizer_state, scheduler_state = ours.one_run_state(ours.state_dict(), our_schedule.state_dict(), i)
        own = adamw.state_dict()
        assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer_state["param_groups"]] == \
               [{k: v for k, v in g.items() if k != "params"} for g in own["param_groups"]]
        assert scheduler_state == {**schedule_i.state_dict(), "lr_lambdas": scheduler_state["lr_lambdas"]}


def test_single_runs_and_seed_ensembles_keep_torch_adamw(tmp_path):
    """Their optimizer, and so their metrics, are what they were before grids existed."""
    seen = []
    original = ToyTaskModule.configure_optimizers

    def spy(self):
        result = original(self)
        seen.append(type(result["optimizer"]))
        return result

    ToyTaskModule.configure_optimizers = spy
    try:
        overrides = [*TINY_GROKKING, "max_steps=2", f"out_dir={tmp_path}"]
        train(load_config(GROKKING, overrides), progress=False)
        train_members(load_config(GROKKING, [*overrides, "seeds=[0, 1]"]).members, progress=False)
        train_members(grid_configs("grokking", tmp_path / "grid", max_steps=2), progress=False)
    finally:
        ToyTaskModule.configure_optimizers = original
    assert seen == [torch.optim.AdamW, torch.optim.AdamW, RunsAdamW]


# --- grids equal their single runs -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["grokking", "induction"])
def test_grid_matches_single_runs(singles, tmp_path, name):
    run_dirs = train_members(grid_configs(name, tmp_path), progress=False)
    for run_dir, single in zip(run_dirs, singles[name]):
        assert_same_run(run_dir, single)
        meta = json.loads((run_dir / "meta.json").read_text())
        assert meta["finished"] and meta["grid"] == [d.name for d in run_dirs]


def test_killed_grid_resumes_and_each_run_resumes_alone(singles, tmp_path):
    """A grid stopped at step 10 of 30 leaves each run a last.ckpt in the one-run format: its own
    learning rate, weight decay and schedule. Run 1 resumes alone; the grid then finishes the others."""
    configs = grid_configs("induction", tmp_path)
    short = [dataclasses.replace(c, max_steps=10) for c in configs]
    for config, run_dir in zip(configs, train_members(short, progress=False)):
        shutil.move(run_dir, config.run_dir)
        (config.run_dir / "config.yaml").write_text(config.to_yaml())
        meta = json.loads((config.run_dir / "meta.json").read_text())
        (config.run_dir / "meta.json").write_text(json.dumps({**meta, "finished": False}))
    checkpoint = torch.load(configs[1].run_dir / "last.ckpt", weights_only=True)
    group, = checkpoint["optimizer_states"][0]["param_groups"]
    assert (group["initial_lr"], group["weight_decay"]) == (3e-3, 0.1)
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [3e-3]
    one_run_shapes = {tuple(v.shape) for v in checkpoint["state_dict"].values()}  # the model's, unstacked
    assert all(tuple(s["exp_avg"].shape) in one_run_shapes for s in checkpoint["optimizer_states"][0]["state"].values())
    train(configs[1], resume=True, progress=False)
    for run_dir, single in zip(train_members(configs, resume=True, progress=False), singles["induction"]):
        assert_same_run(run_dir, single)


# --- what may differ -------------------------------------------------------------------------------

@pytest.mark.parametrize("override, field", [("task.p=13", "task.p"), ("optim.betas=[0.9, 0.99]", "optim.betas"),
                                             ("optim.warmup_steps=3", "optim.warmup_steps"),
                                             ("max_steps=40", "max_steps"), ("model.d_mlp=32", "model.d_mlp")])
def test_runs_that_differ_in_shared_fields_are_refused(tmp_path, override, field):
    configs = grid_configs("grokking", tmp_path)
    configs[2] = load_config(GROKKING, [*TINY_GROKKING, "max_steps=30", f"out_dir={tmp_path}", *GRID["grokking"][2],
                                        override])
    assert differing_field(configs) == field
    with pytest.raises(ConfigError, match=f"^{field}: differs between runs trained together"):
        train_members(configs, progress=False)


@pytest.mark.skipif("init_scale" not in {f.name for f in dataclasses.fields(ModelConfig)},
                    reason="model.init_scale comes with the interventions issue")
def test_grid_over_init_scale_matches_single_runs(tmp_path):
    points = [["model.init_scale=1.0"], ["model.init_scale=3.0", "optim.lr=3e-3"]]
    configs = [load_config(GROKKING, [*TINY_GROKKING, "max_steps=20", f"out_dir={tmp_path}", *p]) for p in points]
    assert differing_field(configs) is None
    for run_dir, config in zip(train_members(configs, progress=False), configs):
        assert_same_run(run_dir, train(dataclasses.replace(config, out_dir=str(tmp_path / "single")), progress=False))


# --- toytasks sweep --vmap ------------------------------------------------------------------------

def write_grid_sweep(tmp_path, grid):
    import os

    base = os.path.relpath(CONFIGS / "grokking.yaml", tmp_path)
    fixed = ("{task.p: 7, model.d_model: 16, model.d_head: 4, model.d_mlp: 32, checkpoints.every: 5, "
             f"checkpoints.resume_every: 10, log_every: 5, max_steps: 20, measures.fourier: null, out_dir: {tmp_path}}}")
    path = tmp_path / "grid.yaml"
    path.write_text(f"base: {base}\noverrides: {fixed}\ngrid:\n{grid}")
    return path


def test_sweep_groups_points_by_what_they_share(tmp_path):
    path = write_grid_sweep(tmp_path, "  task.p: [5, 7]\n  optim.weight_decay: [0.3, 1]\n  optim.lr: [1e-3, 3e-3]\n")
    sweep = load_sweep(path)
    assert [[p.index for p in g.points] for g in sweep.groups] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert sweep.split_by() == ["task.p"]
    assert sweep.groups[1].label == "task.p=7 (points 4,5,6,7)"


def test_sweep_vmap_lists_trains_and_skips_groups(tmp_path, capsys):
    path = write_grid_sweep(tmp_path, "  task.p: [5, 7]\n  optim.weight_decay: [0.3, 1]\n  seed: [0, 1]\n")
    sweep = load_sweep(path)
    assert main(["sweep", str(path), "--list", "--vmap"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2" and lines[1].split("\t")[:2] == ["0", "new"] and "(+3 runs)" in lines[1]
    assert main(["sweep", str(path), "--index", "1", "--vmap", "--no-progress"]) == 0
    printed = [line[5:] for line in capsys.readouterr().out.splitlines() if line.startswith("run: ")]
    assert printed == [str(d) for d in sweep.groups[1].run_dirs]
    assert [p.status() for p in sweep.points] == ["new"] * 4 + ["finished"] * 4
    assert main(["sweep", str(path), "--vmap"]) == 0  # trains group 0 in a worker, skips group 1
    out = capsys.readouterr().out
    assert "8 points in 2 stacked runs (split by task.p)" in out and "2 groups, 1 already finished, 1 trained now" in out
    assert [p.status() for p in sweep.points] == ["finished"] * 8


def test_sweep_vmap_run_with_a_nonfinite_loss_fails_alone(tmp_path, capsys):
    """A learning rate that blows up fails its run, as its single run would; the group's other runs finish."""
    path = write_grid_sweep(tmp_path, "  optim.lr: [1e-3, 1e+30]\n")
    assert main(["sweep", str(path), "--index", "0", "--vmap", "--no-progress"]) == 3
    assert "1 of 2 runs stopped on a non-finite loss" in capsys.readouterr().err
    good, bad = load_sweep(path).points
    assert good.status() == "finished" and bad.status() == "failed"
