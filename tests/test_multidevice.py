"""Lightning's multi-device training through the config's `trainer:` section (DDP on 2 CPU processes)."""
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import CONFIGS, ROOT
from toytasks import load_run
from toytasks.config import load_config
from toytasks.training import train

GROKKING = CONFIGS / "grokking.yaml"
TINY = ["task.p=11", "max_steps=30", "checkpoints.every=10", "checkpoints.resume_every=20", "log_every=7",
        "model.d_model=32", "model.d_head=8", "model.d_mlp=64"]


@pytest.mark.slow  # two processes starting up and talking through gloo: ~15 s or more
def test_full_batch_ddp_on_two_processes_equals_one_device(tmp_path):
    """With a full batch every process computes the same gradient, so DDP's average is the one-device
    gradient: the run must be the same, written once by process 0. (Bit for bit when both run on
    the same number of threads; here the one-device run shares this process's threads, hence the
    float tolerance.)"""
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    done = subprocess.run([sys.executable, "-m", "toytasks.cli", "train", str(GROKKING), *TINY, *ddp,
                           f"out_dir={tmp_path}", "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stdout.splitlines() if line.startswith("run: ")] == \
        [f"run: {load_config(GROKKING, [*TINY, *ddp, f'out_dir={tmp_path}']).run_dir}"]
    multi = load_run(load_config(GROKKING, [*TINY, *ddp, f"out_dir={tmp_path}"]).run_dir)
    single = load_run(train(load_config(GROKKING, [*TINY, f"out_dir={tmp_path / 'one'}"]), progress=False))
    assert multi.config.trainer.devices == 2 and multi.steps == single.steps
    for step in single.steps:
        a, b = (load_file(str(r.path / f"series/step_{step:06d}.safetensors")) for r in (multi, single))
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    pd.testing.assert_frame_equal(multi.metrics, single.metrics, rtol=1e-5, atol=1e-6)
    assert not list(multi.path.rglob("*.tmp")) and not (multi.path / ".lock").exists()
