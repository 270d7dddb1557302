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


# --- tiny trained runs shared by the analysis and notebook tests (each trained once, when asked) --

TINY_SEQUENCE = ["max_steps=20", "checkpoints.every=10", "eval_every=10", "log_every=10", "batch_size=16",
                 "model.d_model=16", "model.d_head=8", "model.d_mlp=32", "optim.warmup_steps=0",
                 "task.vocab=20", "measures.heads.n_sequences=32"]
TINY_RUNS = {  # name: (config, overrides)
    "grokking": ("grokking_cpu", ["task.p=11", "max_steps=30", "checkpoints.every=10", "log_every=10",
                                  "model.d_model=32", "model.d_head=8", "model.d_mlp=64"]),
    "grokking_wd": ("grokking_cpu", ["task.p=11", "max_steps=30", "checkpoints.every=10", "log_every=10",
                                     "model.d_model=32", "model.d_head=8", "model.d_mlp=64", "optim.weight_decay=0.1"]),
    "no_position": ("no_position_cpu", TINY_SEQUENCE + ["task.length=8"]),
    "induction": ("induction_cpu", TINY_SEQUENCE + ["task.half=4"]),
    "induction_1layer": ("induction_1layer_cpu", TINY_SEQUENCE + ["task.half=4"]),
    "brackets": ("brackets_cpu", ["task.max_length=12", "task.size=300", "max_steps=20", "batch_size=32",
                                  "checkpoints.every=10", "eval_every=10", "log_every=10", "model.d_model=16",
                                  "model.d_head=8", "model.d_mlp=16", "optim.warmup_steps=0",
                                  "measures.brackets.every=null"]),
}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """`tiny_runs("grokking")`: the run directory of a seconds-long run of a CPU config."""
    from toytasks.config import load_config
    from toytasks.training import train

    out, trained = tmp_path_factory.mktemp("tiny_runs"), {}

    def get(name: str) -> Path:
        if name not in trained:
            config, overrides = TINY_RUNS[name]
            trained[name] = train(load_config(CONFIGS / f"{config}.yaml", [*overrides, f"out_dir={out}"]),
                                  progress=False)
        return trained[name]

    return get
