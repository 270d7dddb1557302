"""On a GPU (skipped without one): training uses it, and the saved series replays on the CPU."""
import json

import pytest
import torch

from conftest import CONFIGS
from toytasks import load_run
from toytasks.config import load_config
from toytasks.loss import loss_and_accuracy
from toytasks.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_run_replays_on_the_cpu(tmp_path):
    overrides = [f"out_dir={tmp_path}", "task.p=17", "max_steps=30", "checkpoints.every=10",
                 "model.d_model=32", "model.d_head=8", "model.d_mlp=64"]
    run = load_run(train(load_config(CONFIGS / "grokking.yaml", overrides), progress=False))
    assert json.loads((run.path / "meta.json").read_text())["device"].startswith("cuda")
    test = run.batch("test")
    metrics = run.metrics.set_index("step")
    for step in (0, 30):
        with torch.no_grad():
            loss, _ = loss_and_accuracy(run.model_at(step)(test["tokens"])[:, -1:], test["targets"][:, -1:])
        assert loss.item() == pytest.approx(metrics.loc[step, "val/loss"], rel=1e-4)
    assert metrics["fourier/restricted_loss"].notna().sum() == len(run.steps)


# --- the captured step (trainer.capture) -----------------------------------------------------------
# Measured on an NVIDIA H200 (torch 2.11, CUDA 13; scripts/gpu_check.sh): the captured step equals
# itself unrecorded bit for bit; against the eager step (torch's foreach AdamW: other kernels) the
# largest relative loss difference over TINY's steps was 6.3e-9 (full batch) and 4.3e-9 (clipped
# mini-batches, warmup); a captured grid run against its eager single run 6.4e-9, 4.4e-8 and
# 4.9e-6 (the run without weight decay, whose losses are smallest). The bounds sit above them.
CAPTURED_VS_EAGER = 1e-7  # largest relative loss difference, captured vs eager, over TINY's steps
CAPTURED_GRID_VS_SINGLE = 2e-5  # the same for each run of a captured grid against its single run
TINY = ["task.p=17", "max_steps=50", "checkpoints.every=10", "model.d_model=32", "model.d_head=8", "model.d_mlp=64",
        "log_every=7"]


def _losses(run_dir):
    metrics = load_run(run_dir).metrics.set_index("step")
    return metrics[["train/loss", "val/loss"]]


def _largest_relative_difference(a, b) -> float:
    return float(((a - b).abs() / b.abs().clip(lower=1e-30)).max().max())


@pytest.mark.parametrize("extra", [[], ["optim.grad_clip=0.05", "optim.warmup_steps=5", "batch_size=64"]],
                         ids=["full_batch", "minibatch_clipped"])
def test_captured_step_replays_its_unrecorded_self_and_matches_eager(tmp_path, monkeypatch, extra):
    """Recorded as CUDA graphs, the step gives what the same functions give unrecorded on the GPU
    (the same kernels in the same order: expected bit for bit), and the eager step (torch's AdamW,
    foreach on CUDA: other kernels) to float rounding, amplified by training."""
    from toytasks.training import captured

    def run(name, capture, record=True):
        monkeypatch.setattr(captured, "RECORD", record)
        config = load_config(CONFIGS / "grokking.yaml", [*TINY, *extra, f"out_dir={tmp_path / name}",
                                                         f"trainer.capture={capture}"])
        return train(config, progress=False)

    recorded, unrecorded, eager = run("recorded", "on"), run("unrecorded", "on", record=False), run("eager", "off")
    assert json.loads((recorded / "meta.json").read_text())["captured_step"] is True
    assert json.loads((unrecorded / "meta.json").read_text())["captured_step"] is False
    difference = _largest_relative_difference(_losses(recorded), _losses(unrecorded))
    print(f"\ncaptured vs unrecorded ({extra}): largest relative loss difference {difference:.3g}")
    reference = _largest_relative_difference(_losses(recorded), _losses(eager))
    print(f"captured vs eager ({extra}): largest relative loss difference {reference:.3g}")
    assert difference == 0.0
    assert reference <= CAPTURED_VS_EAGER


def test_captured_grid_matches_its_runs(tmp_path):
    """A grid of three (lr, weight decay, seed) captured, against each run trained alone, eagerly."""
    points = [["optim.lr=1e-3", "optim.weight_decay=1.0", "seed=0"], ["optim.lr=3e-3", "optim.weight_decay=0.3", "seed=1"],
              ["optim.lr=1e-3", "optim.weight_decay=0", "seed=2"]]
    from toytasks.training import train_members

    configs = [load_config(CONFIGS / "grokking.yaml", [*TINY, f"out_dir={tmp_path / 'grid'}", *p]) for p in points]
    for run_dir, point in zip(train_members(configs, progress=False), points):
        assert json.loads((run_dir / "meta.json").read_text())["captured_step"] is True
        single = train(load_config(CONFIGS / "grokking.yaml", [*TINY, f"out_dir={tmp_path / 'single'}", *point,
                                                               "trainer.capture=off"]), progress=False)
        difference = _largest_relative_difference(_losses(run_dir), _losses(single))
        print(f"\ncaptured grid run {point} vs its eager single run: largest relative loss difference {difference:.3g}")
        assert difference <= CAPTURED_GRID_VS_SINGLE
