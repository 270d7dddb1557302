"""The tidy metrics table notebooks read: one row per logged step, one column per metric.

`MetricsTable` keeps the rows in memory and writes `metrics.csv` whole, to a temporary name that
is then renamed, so a crash never truncates it. Its methods have the names of Lightning's logger
methods (`log_metrics`, `save`, `finalize`), so the training loop hands rows to it and to
TensorBoard alike; it imports no Lightning.

Reading checks the file (`read_rows`, `read_frame`): a damaged one (a line cut short, a field that
is not a number) is a one-line error naming the line, never a silently shorter number.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Mapping, Optional

from .errors import ToytasksError, short
from .files import describe, write_atomically


class MetricsTable:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[int, dict[str, float]] = read_rows(self.path) if self.path.exists() else {}
        self.changed = False  # since the file was read or written

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Merge `metrics` into the row of `step` (a later value of a metric replaces the earlier)."""
        if step is None:
            raise ValueError("MetricsTable needs the step of every row")
        self.rows.setdefault(int(step), {}).update({k: float(v) for k, v in metrics.items()})
        self.changed = True

    def truncate_after(self, step: int) -> None:
        """Forget rows past `step` (a resumed run writes them again)."""
        kept = {s: row for s, row in self.rows.items() if s <= step}
        self.changed |= len(kept) < len(self.rows)
        self.rows = kept

    def save(self) -> None:
        """Write the table, unless the file already holds exactly these rows."""
        if not self.changed and self.path.exists():
            return
        columns = sorted({name for row in self.rows.values() for name in row})

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", *columns])
                for step in sorted(self.rows):
                    writer.writerow([step, *(_fmt(self.rows[step].get(c)) for c in columns)])

        write_atomically(self.path, write)
        self.changed = False

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
    """{step: {metric: value}} from metrics.csv, every line checked."""
    reader = csv.reader(io.StringIO(_checked_text(path), newline=""))
    header = next(reader)
    rows = {}
    for number, fields in enumerate(reader, start=2):
        if len(fields) != len(header):
            raise _damaged(path, f"line {number} has {len(fields)} fields, the header {len(header)}")
        try:
            rows[int(fields[0])] = {k: float(v) for k, v in zip(header[1:], fields[1:]) if v != ""}
        except ValueError:
            raise _damaged(path, f"line {number} holds something that is not a number: {short(fields)}") from None
    return rows


def read_frame(path: Path):
    """metrics.csv as a DataFrame (`step` and one column per metric), checked like read_rows."""
    import pandas as pd

    text = _checked_text(path)
    lines = text.count("\n")
    if text.count(",") != lines * text[:text.index("\n")].count(","):  # some line has too few or too many fields
        read_rows(path)  # names the line
    try:
        frame = pd.read_csv(io.StringIO(text))
    except ValueError as error:  # pandas' parser errors
        raise _damaged(path, str(error).strip().splitlines()[0]) from None
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise _damaged(path, f"column {short(bad[0])} holds something that is not a number")
    return frame


def _checked_text(path: Path) -> str:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ToytasksError(f"{path}: cannot read ({describe(error)})") from None
    except UnicodeDecodeError:
        raise _damaged(path, "not text") from None
    if not text.startswith("step") or not text.endswith("\n"):
        raise _damaged(path, "its last line is cut short" if text.startswith("step") else "no `step` header")
    return text


def _damaged(path: Path, what: str) -> ToytasksError:
    return ToytasksError(f"{path}: damaged ({what}); restore it, or train the run again with --overwrite")


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return ""
    return repr(value) if math.isfinite(value) else str(value)
