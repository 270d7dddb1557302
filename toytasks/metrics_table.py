"""The tidy metrics table notebooks read: one row per logged step, one column per metric.

`MetricsTable` keeps the rows in memory and writes `metrics.csv` whole, to a temporary name that
is then renamed, so a crash never truncates it. Its methods have the names of Lightning's logger
methods (`log_metrics`, `save`, `finalize`), so the training loop hands rows to it and to
TensorBoard alike; it imports no Lightning.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Optional

from .files import write_atomically


class MetricsTable:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[int, dict[str, float]] = read_rows(self.path) if self.path.exists() else {}

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Merge `metrics` into the row of `step` (a later value of a metric replaces the earlier)."""
        if step is None:
            raise ValueError("MetricsTable needs the step of every row")
        self.rows.setdefault(int(step), {}).update({k: float(v) for k, v in metrics.items()})

    def truncate_after(self, step: int) -> None:
        """Forget rows past `step` (a resumed run writes them again)."""
        self.rows = {s: row for s, row in self.rows.items() if s <= step}

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

    def frame(self):
        """The rows as a DataFrame with a `step` column (what `pd.read_csv(metrics.csv)` gives)."""
        import pandas as pd

        columns = sorted({name for row in self.rows.values() for name in row})
        data = {"step": sorted(self.rows)}
        data.update({c: [self.rows[s].get(c, math.nan) for s in data["step"]] for c in columns})
        return pd.DataFrame(data)


def read_rows(path: Path) -> dict[int, dict[str, float]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return {int(r["step"]): {k: float(v) for k, v in r.items() if k != "step" and v != ""}
                for r in reader}


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return ""
    return repr(value) if math.isfinite(value) else str(value)
