import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
# The thread count the test's subprocesses get too (from OMP_NUM_THREADS when it is set), so
# that runs split between this process and a subprocess add up in the same order.
_omp = os.environ.get("OMP_NUM_THREADS", "")
torch.set_num_threads(int(_omp) if _omp.isdigit() and int(_omp) > 0 else min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


@pytest.fixture
def tiny_grokking(tmp_path):
    """Overrides that turn configs/grokking.yaml into a seconds-long run under tmp_path."""
    return [f"out_dir={tmp_path}", "task.p=11", "max_steps=30", "checkpoints.every=10",
            "checkpoints.resume_every=20", "log_every=7", "model.d_model=32", "model.d_head=8",
            "model.d_mlp=64"]
