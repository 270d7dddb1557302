"""Analysis API: run.models, run.map and its cache, load_runs, latest_run, mean ablation, plot helpers."""
import json
import shutil

import pytest
import torch

from toytasks import latest_run, load_run, load_runs
from toytasks.errors import ToytasksError
from toytasks.analysis.run import Run
from toytasks.layout import RunPaths
from toytasks.storage import save_weights


@pytest.fixture
def run(tiny_runs, tmp_path):
    """A private copy of the tiny grokking run (tests here add checkpoints and caches to it)."""
    return load_run(shutil.copytree(tiny_runs("grokking"), tmp_path / "run"))


@pytest.fixture
def count_loads(monkeypatch):
    """Counts checkpoint loads: every model run.models / run.map give comes from Run.model_at."""
    loads = []
    original = Run.model_at

    def model_at(self, step):
        loads.append(step)
        return original(self, step)

    monkeypatch.setattr(Run, "model_at", model_at)
    return loads


def embed_norm(model):
    return {"W_E": model.W_E.norm(), "W_U": model.unembed.W_U.norm().item(), "one": 1}


def test_models_yields_each_selected_step(run):
    assert run.steps == [0, 1, 2, 4, 8, 10, 20, 30]  # grokking_cpu adds log-spaced steps
    assert [step for step, _ in run.models()] == run.steps
    assert [step for step, _ in run.models(every=20)] == [0, 20, 30]  # multiples, and the last
    pairs = list(run.models(steps=[30, 0]))
    assert [step for step, _ in pairs] == [0, 30]
    first, last = pairs[0][1], pairs[1][1]
    assert first is not last and not torch.equal(first.W_E, last.W_E)  # fresh models, not one reloaded
    assert torch.equal(last.W_E, run.model_at(30).W_E) and not last.training
    with pytest.raises(ToytasksError, match="no checkpoint at steps \\[5\\]"):
        run.select_steps(steps=[5])


def test_map_caches_and_picks_up_a_new_checkpoint(run, count_loads):
    first = run.map(embed_norm, name="norms")
    assert list(first.columns) == ["step", "W_E", "W_U", "one"] and list(first["step"]) == run.steps
    assert first["W_E"].iloc[-1] == pytest.approx(run.model_at(30).W_E.norm().item())
    assert (run.path / "analysis" / "norms.csv").exists()
    count_loads.clear()

    again = run.map(embed_norm, name="norms")
    assert count_loads == [] and again.equals(first)  # the cache answers; no checkpoint loaded

    save_weights(run.model_at(30), RunPaths(run.path).series(40), 40)  # the series grows (a resumed run)
    count_loads.clear()
    grown = run.map(embed_norm, name="norms")
    assert count_loads == [40] and list(grown["step"]) == [*first["step"], 40]
    assert grown.iloc[:-1].equals(first)

    count_loads.clear()
    run.map(embed_norm, name="norms", recompute=True)
    assert count_loads == run.steps and run.steps[-1] == 40


def test_map_computes_only_what_an_earlier_every_left_out(run, count_loads):
    assert list(run.map(embed_norm, name="norms", every=20)["step"]) == [0, 20, 30]
    count_loads.clear()
    assert list(run.map(embed_norm, name="norms")["step"]) == run.steps
    assert count_loads == [1, 2, 4, 8, 10]


def test_map_keeps_what_it_computed_when_interrupted(run, count_loads):
    def fails_at_step_8(model):
        if len(count_loads) == 5:  # the fifth checkpoint: step 8
            raise KeyboardInterrupt
        return embed_norm(model)

    with pytest.raises(KeyboardInterrupt):
        run.map(fails_at_step_8, name="norms")
    count_loads.clear()
    assert list(run.map(embed_norm, name="norms")["step"]) == run.steps
    assert count_loads == [8, 10, 20, 30]


def test_map_takes_a_bare_number_and_rejects_the_rest(run):
    assert list(run.map(lambda m: m.W_E.norm(), name="w_e").columns) == ["step", "w_e"]
    with pytest.raises(ToytasksError, match="a tensor of shape \\[12, 32\\] for 'W_E'"):
        run.map(lambda m: {"W_E": m.W_E}, name="matrix")
    with pytest.raises(ToytasksError, match="must be a file name"):
        run.map(embed_norm, name="../elsewhere")


def test_load_runs_two_configs(tiny_runs, tmp_path):
    a, b = tiny_runs("grokking"), tiny_runs("grokking_wd")
    runs = load_runs([a, b])
    assert len(runs) == 2 and {r.path for r in runs} == {a, b}
    configs = runs.configs.set_index("run")
    assert configs.loc[str(a), "optim.weight_decay"] == 1.0 and configs.loc[str(b), "optim.weight_decay"] == 0.1
    assert configs.loc[str(a), "task.p"] == 11 and configs.loc[str(a), "optim.betas"] == (0.9, 0.98)
    assert runs.varying == ["optim.weight_decay"]

    metrics = runs.metrics
    assert len(metrics) == len(runs[0].metrics) + len(runs[1].metrics)
    for path, decay in ((a, 1.0), (b, 0.1)):
        rows = metrics[metrics["run"] == str(path)]
        assert list(rows["step"]) == list(range(31)) and set(rows["optim.weight_decay"]) == {decay}
        assert rows["val/loss"].tolist() == load_run(path).metrics["val/loss"].tolist()

    summary = runs.summary.set_index("run")
    assert {"memorisation_end", "cleanup_end", "final/val/loss", "optim.weight_decay"} <= set(summary.columns)
    assert summary.loc[str(b), "final/val/loss"] == load_run(b).metrics["val/loss"].iloc[-1]

    # The same runs found from their common directory, and from a glob pattern.
    root = a.parent.parent
    assert [r.path for r in load_runs(root)] == sorted([a, b] + [p for p in root.glob("*/*") if p not in (a, b)])
    assert [r.path for r in load_runs(f"{root}/grokking_cpu/*")] == sorted([a, b])
    with pytest.raises(ToytasksError, match="no run directory"):
        load_runs(tmp_path)

    # A run that has not logged yet (a sweep in progress) is listed, with no metrics.
    started = shutil.copytree(b, tmp_path / "started")
    (started / "metrics.csv").unlink()
    runs = load_runs([a, started])
    assert set(runs.metrics["run"]) == {str(a)} and len(runs.summary) == 2


def test_latest_run_looks_up_from_a_notebooks_folder(tiny_runs, tmp_path, monkeypatch):
    experiment = tmp_path / "checkpoints" / "grokking_cpu"
    for name, started in (("old", "2024-01-01T10:00:00"), ("new", "2024-01-02T09:00:00")):
        run_dir = shutil.copytree(tiny_runs("grokking"), experiment / name)
        meta = json.loads((run_dir / "meta.json").read_text())
        (run_dir / "meta.json").write_text(json.dumps({**meta, "started": started}))
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert latest_run("grokking_cpu") == experiment.resolve() / "new"
    with pytest.raises(ToytasksError, match="toytasks train configs/induction_cpu.yaml"):
        latest_run("induction_cpu")


def test_sample_is_seeded_and_separate_from_training(tmp_path):
    from conftest import CONFIGS
    from toytasks.config import load_config

    (tmp_path / "config.yaml").write_text(load_config(CONFIGS / "induction_cpu.yaml").to_yaml())
    run = load_run(tmp_path)  # sampling needs the config alone
    a, b = run.sample(8, seed=1), run.sample(8, seed=1)
    assert torch.equal(a["tokens"], b["tokens"]) and a["tokens"].shape == (8, run.task.n_ctx)
    assert not torch.equal(a["tokens"], run.sample(8, seed=2)["tokens"])
    with pytest.raises(ToytasksError, match="run.sample"):
        run.batch("test")
    # Never the training stream, even with the run's own seed (the CPU stream of a CPU run).
    from toytasks.data import SAMPLE_MIX, TrainBatches

    stream = TrainBatches(run.task, 1, 8, seed=run.config.seed, device=torch.device("cpu"))
    assert not torch.equal(run.sample(8, seed=run.config.seed)["tokens"], stream.next_batch()["tokens"])
    colliding = (run.config.seed - 0x5EED) * pow(SAMPLE_MIX, -1, 2**32) % 2**32  # the one seed that would
    with pytest.raises(ToytasksError, match="run's own data streams"):
        run.sample(8, seed=colliding)


def test_ddp_processes_draw_different_batches_on_the_cpu():
    """The CPU generator reads only a seed's low 32 bits: each process's stream must differ there."""
    from toytasks.data import TrainBatches, stream_seed
    from toytasks.tasks.induction import Induction

    batches = [TrainBatches(Induction(vocab=20, half=4), 1, 8, seed=stream_seed(0, rank), device=torch.device("cpu"))
               .next_batch()["tokens"] for rank in range(4)]
    assert stream_seed(0, 0) == 0  # process 0 draws what a one-device run draws
    assert all(not torch.equal(batches[i], batches[j]) for i in range(4) for j in range(i))


def test_mean_ablation_replaces_each_activation_by_its_mean():
    import torch.nn.functional as F

    from toytasks.analysis.ablation import mean_ablation, standard_hook_names
    from toytasks.model import build_model
    from toytasks.tasks.previous_token import PreviousToken
    from conftest import CONFIGS
    from toytasks.config import load_config

    config = load_config(CONFIGS / "no_position_cpu.yaml", ["model.d_model=16", "model.d_head=8", "model.d_mlp=32"])
    task = PreviousToken(vocab=20, length=8)
    model = build_model(config.model, task, seed=0).eval()
    names = standard_hook_names(model)
    assert {"hook_embed", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "ln_final.hook_scale"} <= set(names)
    assert not any(n.endswith((".hook_in", ".hook_out", "hook_pos_embed", "hook_attn_scores")) for n in names)

    reference, batch = (task.sample(64, torch.Generator().manual_seed(s)) for s in (0, 1))
    losses = mean_ablation(model, reference, batch)
    assert list(losses.index) == ["none", *sorted(names, key=list(losses.index).index)]
    scored = batch["targets"] != -100
    with torch.no_grad():
        plain = F.cross_entropy(model(batch["tokens"])[scored].double(), batch["targets"][scored])
        mean_logits = model(reference["tokens"]).mean(0).expand(len(batch["tokens"]), -1, -1)
        unembed = F.cross_entropy(mean_logits[scored].double(), batch["targets"][scored])
    assert losses["none"] == pytest.approx(plain.item())
    assert losses["hook_unembed"] == pytest.approx(unembed.item(), rel=1e-5)  # the logits themselves
    assert losses.drop("none").nunique() > 5  # each hook moves the loss its own way


def test_plot_helpers_draw_panels():
    from toytasks import plots
    from toytasks.measures.heads import best_head

    fig = plots.imshow(torch.randn(3, 4, 5), facets=["a", "b", "c"], x=list("vwxyz"))
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"] and len(fig.axes) == 4  # + colorbar
    assert plots.imshow(torch.zeros(0, 4)).axes[0].texts[0].get_text() == "nothing to show"
    assert len(plots.line(torch.randn(2, 6), labels=["x", "y"]).axes[0].lines) == 2
    plots.plt.close("all")
    row = {"heads/induction/L0H1": 0.2, "heads/induction/L1H3": 0.7, "heads/prev_token/L0H0": 0.9, "step": 5}
    assert best_head(row, "induction") == (1, 3) and best_head(row, "prev_token") == (0, 0)


def test_readme_analysis_lines_run(tiny_runs, tmp_path, monkeypatch):
    """The README's "Analyse a run" block, as written, in a directory holding the quick start's runs."""
    import re

    import matplotlib

    from conftest import ROOT

    matplotlib.use("Agg")
    section = (ROOT / "README.md").read_text().split("## Analyse a run", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for name in ("grokking", "grokking_wd"):  # two weight decays, as after the README's second command
        run_dir = tiny_runs(name)
        shutil.copytree(run_dir, tmp_path / "checkpoints" / "grokking_cpu" / run_dir.name)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert list(namespace["norms"]["step"]) == namespace["run"].steps
    assert namespace["cache"]["post", 0, "mlp"].shape[-1] == namespace["run"].config.model.d_mlp
    assert len(namespace["load_runs"]("checkpoints/grokking_cpu")) == 2
