"""Metrics without a host sync per step, and the tidy metrics table notebooks read.

`DeviceMetrics` keeps each step's numbers as device tensors and copies them out in one go every
`log_every` steps. `MetricsTable` is a Lightning logger that keeps one row per logged step and
writes them to `metrics.csv` (to a temporary name, then renamed, so a crash never truncates it).
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from .files import write_atomically


class DeviceMetrics:
    """Per-step scalars held on the device until `drain()`."""

    def __init__(self):
        self._pending: list[tuple[int, str, torch.Tensor | float]] = []

    def add(self, step: int, values: Mapping[str, torch.Tensor | float]) -> None:
        for name, value in values.items():
            value = value.detach() if isinstance(value, torch.Tensor) else float(value)
            self._pending.append((step, name, value))

    def drain(self) -> dict[int, dict[str, float]]:
        """All pending values as {step: {name: float}}, with one device-to-host copy."""
        tensors = [v.double() for _, _, v in self._pending if isinstance(v, torch.Tensor)]
        copied = iter(torch.stack(tensors).tolist() if tensors else [])
        rows: dict[int, dict[str, float]] = defaultdict(dict)
        for step, name, value in self._pending:
            rows[step][name] = next(copied) if isinstance(value, torch.Tensor) else value
        self._pending.clear()
        return dict(sorted(rows.items()))


class MetricsTable(Logger):
    """One row per step, one column per metric, in `RUN_DIR/metrics.csv`."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.rows: dict[int, dict[str, float]] = read_rows(self.path) if self.path.exists() else {}

    @property
    def name(self) -> str:
        return "metrics"

    @property
    def version(self) -> str:
        return ""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        return self.rows

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config.yaml beside the table holds them

    @rank_zero_only  # with several DDP processes, process 0 keeps the table
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if step is None:
            raise ValueError("MetricsTable needs the step of every row")
        self.rows.setdefault(int(step), {}).update({k: float(v) for k, v in metrics.items()})

    def truncate_after(self, step: int) -> None:
        """Forget rows past `step` (a resumed run writes them again)."""
        self.rows = {s: row for s, row in self.rows.items() if s <= step}

    @rank_zero_only
    def save(self) -> None:
        columns = sorted({name for row in self.rows.values() for name in row})

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", *columns])
                for step in sorted(self.rows):
                    writer.writerow([step, *(_fmt(self.rows[step].get(c)) for c in columns)])

        write_atomically(self.path, write)

    def finalize(self, status: str) -> None:
        self.save()


def read_rows(path: Path) -> dict[int, dict[str, float]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return {int(r["step"]): {k: float(v) for k, v in r.items() if k != "step" and v != ""}
                for r in reader}


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return ""
    return repr(value) if math.isfinite(value) else str(value)
