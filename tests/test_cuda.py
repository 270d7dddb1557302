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
