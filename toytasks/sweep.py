"""Sweeps: a grid of dotted overrides over a base config, one run directory per point.

A sweep file (YAML), e.g. configs/sweeps/grokking_weight_decay.yaml:

    base: ../grokking_cpu.yaml         # the base config, relative to this file
    experiment: grokking_wd            # optional; default: this file's name
    overrides: {max_steps: 3000}       # optional; dotted keys set for every point
    grid:                              # dotted key -> list of values; the points are their
      optim.weight_decay: [0.3, 1, 3]  # product, in this order, the last key varying fastest
      seed: [0, 1, 2]

Every point is a fully resolved Config, and its run directory follows from it (`run_id`), so a
re-run finds its runs: finished ones are skipped, interrupted ones resume from `last.ckpt`, new
ones start. A point whose config has `seeds` is an ensemble, trained in one process.

`run_sweep` runs the points in `jobs` worker processes (`toytasks sweep FILE --index I`, the
same command an array job runs on a cluster); `train_point` is what one worker does.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import Config, apply_overrides, config_from_dict, read_yaml, set_dotted
from .errors import ToytasksError
from .measures import check_measures
from .layout import RunPaths
from .storage import prepare_run_dir, read_meta

SWEEP_KEYS = ("base", "experiment", "overrides", "grid")


@dataclasses.dataclass(frozen=True)
class Point:
    index: int
    values: dict[str, Any]
    """The grid's values at this point, by dotted key."""
    config: Config

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.values.items())

    @property
    def run_dirs(self) -> list[Path]:
        return [member.run_dir for member in self.config.members]

    def status(self) -> str:
        """finished, unfinished, failed (stopped on a non-finite loss; retried like unfinished) or new."""
        metas = [read_meta(run_dir) for run_dir in self.run_dirs]
        if all(meta.get("finished") for meta in metas):
            return "finished"
        if any(meta.get("failed") for meta in metas):
            return "failed"
        return "unfinished" if any(metas) else "new"


@dataclasses.dataclass(frozen=True)
class Sweep:
    path: Path
    overrides: tuple[str, ...]
    """Command-line `key=value` overrides, applied to every point (before the grid's values)."""
    points: list[Point]

    @property
    def name(self) -> str:
        return self.path.stem

    def point(self, index: int) -> Point:
        if not 0 <= index < len(self.points):
            raise ToytasksError(f"--index {index}: {self.path} has {len(self.points)} points "
                                f"(0 to {len(self.points) - 1})")
        return self.points[index]


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file and expand its grid into validated configs (errors name the point)."""
    path = Path(path)
    if not path.is_file():
        raise ToytasksError(f"{path}: sweep file not found")
    spec = read_yaml(path)
    unknown = sorted(map(str, set(spec) - set(SWEEP_KEYS)))
    if unknown:
        raise ToytasksError(f"{path}: {unknown[0]}: unknown key; allowed: {', '.join(SWEEP_KEYS)}")
    base = _base_data(path, spec)
    base["experiment"] = spec.get("experiment", path.stem)  # checkpoints/<experiment>/ holds the sweep
    fixed = spec.get("overrides") or {}
    if not isinstance(fixed, dict):
        raise ToytasksError(f"{path}: overrides: expected a mapping of dotted keys to values")
    for key, value in fixed.items():
        set_dotted(base, str(key), value, f"{path}: overrides.{key}")
    base = apply_overrides(base, overrides)
    grid = _grid(path, spec.get("grid"))

    points, seen = [], {}
    for index, combination in enumerate(itertools.product(*grid.values())):
        values = dict(zip(grid, combination))
        data = copy.deepcopy(base)
        for key, value in values.items():
            set_dotted(data, key, value, f"{path}: grid.{key}")
        try:
            config = config_from_dict(data)
            check_measures(config)
        except ToytasksError as error:
            label = " ".join(f"{k}={v}" for k, v in values.items())
            raise ToytasksError(f"{path}: point {index} ({label}): {error}") from None
        point = Point(index, values, config)
        for run_dir in point.run_dirs:
            if run_dir in seen:
                raise ToytasksError(f"{path}: points {seen[run_dir]} and {index} are the same run ({run_dir})")
            seen[run_dir] = index
        points.append(point)
    return Sweep(path, tuple(overrides), points)


def _base_data(path: Path, spec: dict) -> dict:
    base = spec.get("base")
    if not isinstance(base, str) or not base:
        raise ToytasksError(f"{path}: base: is required, the path of a config relative to the sweep file")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ToytasksError(f"{path}: base: {base_path}: config file not found")
    return read_yaml(base_path)


def _grid(path: Path, grid: Any) -> dict[str, list]:
    if not isinstance(grid, dict) or not grid:
        raise ToytasksError(f"{path}: grid: is required, a mapping of dotted keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ToytasksError(f"{path}: grid.{key}: expected a non-empty list of values, got {values!r}")
    return {str(key): values for key, values in grid.items()}


# --- running ---------------------------------------------------------------------------------

def train_point(point: Point, progress: bool = True) -> list[Path]:
    """Train one point in this process: skip it if finished, resume it if interrupted."""
    config = point.config
    if point.status() == "finished":
        return point.run_dirs
    from .training import train_runs

    return train_runs(config, resume=True, progress=progress)


def list_points(sweep: Sweep) -> list[str]:
    """The lines of `toytasks sweep FILE --list`: the number of points, then one line each."""
    lines = [str(len(sweep.points))]
    for point in sweep.points:
        dirs = point.run_dirs
        more = f" (+{len(dirs) - 1} seeds)" if len(dirs) > 1 else ""
        lines.append(f"{point.index}\t{point.status()}\t{dirs[0]}{more}\t{point.label}")
    return lines


def run_sweep(sweep: Sweep, jobs: int = 1, say: Callable[[str], None] = print) -> list[Point]:
    """Train every point that is not finished, `jobs` at a time, each in its own process.

    Every point's resolved config is written to its run directory before anything trains.
    Returns the points that failed; the others run to the end regardless.
    """
    if jobs < 1:
        raise ToytasksError(f"-j {jobs}: must be at least 1")
    total = len(sweep.points)
    statuses = {point.index: point.status() for point in sweep.points}
    todo = [point for point in sweep.points if statuses[point.index] != "finished"]
    for point in todo:
        for member in point.config.members:
            if not read_meta(member.run_dir).get("finished"):
                prepare_run_dir(member, resume=True, overwrite=False)
    for point in sweep.points:
        if statuses[point.index] == "finished":
            say(f"[{point.index + 1}/{total}] finished, skipped  {point.run_dirs[0]}  {point.label}")

    lock, failed = threading.Lock(), []
    env = worker_env(jobs)

    def run(point: Point) -> None:
        verb = "start" if statuses[point.index] == "new" else "resume"
        with lock:
            say(f"[{point.index + 1}/{total}] {verb}  {point.run_dirs[0]}  {point.label}")
        log = RunPaths(point.run_dirs[0]).train_log
        started = time.time()
        command = [sys.executable, "-m", "toytasks.cli", "sweep", str(sweep.path), *sweep.overrides,
                   "--index", str(point.index), "--no-progress"]
        with open(log, "a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        seconds = time.time() - started
        with lock:
            if code == 0:
                say(f"[{point.index + 1}/{total}] done in {seconds:.0f} s  {point.run_dirs[0]}")
            else:
                failed.append(point)
                say(f"[{point.index + 1}/{total}] FAILED (exit {code}) after {seconds:.0f} s: "
                    f"{_last_line(log)}  (log: {log})")

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        list(pool.map(run, todo))
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too; start no further point
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    failed.sort(key=lambda p: p.index)
    say(f"sweep {sweep.name}: {total} points, {total - len(todo)} already finished, {len(todo) - len(failed)} "
        f"trained now, {len(failed)} failed" + "".join(f"{'; ' if i else ': '}point {p.index} ({p.label})"
                                                      for i, p in enumerate(failed)))
    return failed


def worker_env(jobs: int) -> dict[str, str]:
    """The environment of a worker: its share of the CPU threads, and this copy of toytasks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # never more than the caller allowed
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no output)"
