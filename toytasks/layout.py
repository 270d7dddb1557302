"""The one place that names the files of a run directory.

    checkpoints/<experiment>/<run_id>/
      config.yaml      the fully resolved config
      meta.json        versions, device, git sha, times, finished / failed
      data/            the train/test split of a finite task (a DatasetDict)
      series/          step_000100.safetensors ...: the weights at each scheduled step
      last.ckpt        resumable: weights, optimizer, schedule, data generator
      last.ckpt.next   an ensemble's next last.ckpt while all its seeds' files are committed
      metrics.csv      one row per logged step
      tb/              TensorBoard events
      plots/           PNGs written by `toytasks plot`
      analysis/        run.map's cache: <name>.csv
      <summary>.json   a measure's end-of-run summary (phases.json, heads.json)
      <measure>/       a measure's own files, e.g. llc/ (its settings and per-chain traces)
      .lock            held by the process writing the run (an flock: released when it dies)
      .<name>.<random>.tmp   a write in progress (toytasks/files.py); removed when found stale

Everything else reaches these paths through `RunPaths(run_dir)`.
"""
from __future__ import annotations

import re
from pathlib import Path

_STEP_FILE = re.compile(r"step_(\d+)\.safetensors")


class RunPaths:
    """`RunPaths(run_dir).metrics` and so on."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunPaths({str(self.root)!r})"

    config = property(lambda self: self.root / "config.yaml")
    meta = property(lambda self: self.root / "meta.json")
    data = property(lambda self: self.root / "data")
    series_dir = property(lambda self: self.root / "series")
    resumable = property(lambda self: self.root / "last.ckpt")
    staged_resumable = property(lambda self: self.root / "last.ckpt.next")
    metrics = property(lambda self: self.root / "metrics.csv")
    tensorboard = property(lambda self: self.root / "tb")
    plots = property(lambda self: self.root / "plots")
    analysis = property(lambda self: self.root / "analysis")
    lock = property(lambda self: self.root / ".lock")
    train_log = property(lambda self: self.root / "train.log")  # a sweep worker's output

    def directories(self) -> list[Path]:
        """The subdirectories toytasks writes into."""
        return [self.data, self.series_dir, self.tensorboard, self.plots, self.analysis]

    def series(self, step: int) -> Path:
        return self.series_dir / f"step_{step:06d}.safetensors"

    def saved_steps(self) -> list[int]:
        """Steps with a complete series file (a crashed write leaves only a hidden .tmp file)."""
        files = self.series_dir.glob("step_*.safetensors")
        return sorted(int(m.group(1)) for f in files if (m := _STEP_FILE.fullmatch(f.name)))

    def summary(self, name: str) -> Path:
        """A measure's end-of-run summary file, e.g. `phases.json`."""
        return self.root / name

    def measure_dir(self, name: str) -> Path:
        """A measure's own files (not created here)."""
        return self.root / name

    def is_run(self) -> bool:
        return self.config.is_file()
