"""Sweeps: a grid of dotted overrides over a base config, one run directory per point.

A sweep file (YAML), e.g. configs/sweeps/grokking_weight_decay.yaml:

    base: ../grokking_cpu.yaml         # the base config, relative to this file
    experiment: grokking_wd            # optional; default: this file's name
    overrides: {max_steps: 3000}       # optional; dotted keys set for every point
    grid:                              # dotted key -> list of values; the points are their
      optim.weight_decay: [0.3, 1, 3]  # product, in this order, the last key varying fastest
      seed: [0, 1, 2]

A sweep may also name `arms`: alternatives that are not a product, each a mapping of dotted
overrides (`orthograd: {optim.orthograd: true, optim.weight_decay: 0}`; `{}` for the base as it
is). Every arm is crossed with the grid, the arm varying slowest unless the grid lists the arm
names under the key `arm` where they should vary (`grid: {optim.lr: [...], arm: [a, b], seed: [...]}`
trains every arm at the first learning rate first). An arm's overrides apply before the grid's
values. With arms the grid is optional.

Every point is a fully resolved Config, and its run directory follows from it (`run_id`), so a
re-run finds its runs: finished ones are skipped, interrupted ones resume from `last.ckpt`, new
ones start. A point whose config has `seeds` is an ensemble, trained in one process.

`run_sweep` runs the points in `jobs` worker processes (`toytasks sweep FILE --index I`, the
same command an array job runs on a cluster); `train_point` is what one worker does. A Ctrl-C or
SIGTERM starts no further point and asks the running workers to stop at the end of their step,
each with a resumable checkpoint; such points are reported as interrupted.

With `vmap` (`toytasks sweep FILE --vmap`) the unit of work is a group instead of a point: the
points whose runs differ only in per-run fields (toytasks/groups.py: seeds, learning rate, weight
decay, initial weights) train together as one stacked run in one process, and points that differ
in anything else go to separate groups (a grid over task.p and weight decay: one group per p).
`--list --vmap` and `--index I --vmap` then list and train groups. A run of a group whose loss
turns non-finite fails alone, as its single run would: the group's other runs resume without it.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import Config, apply_overrides, config_from_dict, read_yaml, set_dotted
from .errors import NonFiniteLoss, ToytasksError, one_line, short
from .groups import PER_RUN, shared_fields
from .interrupts import Interrupted, signal_name
from .measures import check_measures
from .layout import RunPaths
from .storage import RunBusy, RunLock, prepare_run_dir, read_meta

SWEEP_KEYS = ("base", "experiment", "overrides", "arms", "grid")
# Points in one sweep file. Each is validated, listed and checked for its status when the file is
# read (about 1 ms each), and becomes a run directory: beyond this, split the sweep into several.
MAX_POINTS = 10_000


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
    def members(self) -> list[Config]:
        return self.config.members

    @property
    def run_dirs(self) -> list[Path]:
        return [member.run_dir for member in self.members]

    def status(self) -> str:
        """finished, unfinished, failed (stopped on a non-finite loss; retried like unfinished), new,
        or broken (its meta.json is unreadable: training it says why)."""
        return _status(self.run_dirs)


@dataclasses.dataclass(frozen=True)
class Group:
    """Points whose runs train together as one stacked run (`--vmap`)."""
    index: int
    points: list[Point]

    @property
    def members(self) -> list[Config]:
        return [member for point in self.points for member in point.members]

    @property
    def run_dirs(self) -> list[Path]:
        return [member.run_dir for member in self.members]

    @property
    def label(self) -> str:
        """The grid values its points share, then which points it holds."""
        shared = {k: v for k, v in self.points[0].values.items() if all(p.values[k] == v for p in self.points)}
        indices = ",".join(str(p.index) for p in self.points)
        return " ".join([*(f"{k}={v}" for k, v in shared.items()), f"(points {indices})"])

    def status(self) -> str:
        return _status(self.run_dirs)


def _status(run_dirs: list[Path]) -> str:
    try:
        metas = [read_meta(run_dir) for run_dir in run_dirs]
    except ToytasksError:
        return "broken"
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

    @property
    def groups(self) -> list[Group]:
        """The points in groups that train as one stacked run each, in order of first point."""
        keys: dict[str, list[Point]] = {}
        for point in self.points:
            key = repr(sorted(shared_fields(point.members[0]).items()))
            keys.setdefault(key, []).append(point)
        return [Group(i, points) for i, points in enumerate(keys.values())]

    def units(self, vmap: bool) -> list[Point] | list[Group]:
        """What one worker trains: a point, or with `vmap` a group of points."""
        return self.groups if vmap else self.points

    def point(self, index: int, vmap: bool = False) -> Point | Group:
        units, kind = self.units(vmap), "groups" if vmap else "points"
        if not 0 <= index < len(units):
            raise ToytasksError(f"--index {index}: {self.path} has {len(units)} {kind} (0 to {len(units) - 1})")
        return units[index]

    def split_by(self) -> list[str]:
        """The grid's keys that put points into separate groups (they are not per-run fields)."""
        keys = self.points[0].values
        return [k for k in keys if k not in PER_RUN and len({repr(p.values[k]) for p in self.points}) > 1]


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
    arms = _arms(path, spec.get("arms"))
    grid = _grid(path, spec.get("grid"), arms)

    points, seen = [], {}
    for index, combination in enumerate(itertools.product(*grid.values())):
        values = dict(zip(grid, combination))
        data = copy.deepcopy(base)
        for key, value in (arms or {}).get(values.get("arm"), {}).items():
            set_dotted(data, key, value, f"{path}: arms.{values['arm']}.{key}")
        for key, value in values.items():
            if key != "arm":
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


def _arms(path: Path, arms: Any) -> dict[str, dict] | None:
    if arms is None:
        return None
    if not isinstance(arms, dict) or not arms:
        raise ToytasksError(f"{path}: arms: expected a mapping of arm names to mappings of dotted overrides")
    for name, arm in arms.items():
        if not isinstance(arm, dict) and arm is not None:
            raise ToytasksError(f"{path}: arms.{name}: expected a mapping of dotted keys to values, got {arm!r}")
    return {str(name): {str(k): v for k, v in (arm or {}).items()} for name, arm in arms.items()}


def _grid(path: Path, grid: Any, arms: dict[str, dict] | None) -> dict[str, list]:
    """The grid's keys and values, with `arm` (the arm names) where the arms vary: where the grid
    lists them, else first."""
    if grid is None and arms is not None:
        grid = {}
    elif not isinstance(grid, dict) or not grid:
        raise ToytasksError(f"{path}: grid: is required, a mapping of dotted keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ToytasksError(f"{path}: grid.{key}: expected a non-empty list of values, got {values!r}")
    grid = {str(key): values for key, values in grid.items()}
    if "arm" in grid:
        unknown = [name for name in grid["arm"] if arms is None or name not in arms]
        if unknown:
            raise ToytasksError(f"{path}: grid.arm: {unknown[0]!r} is not one of the sweep's arms "
                                f"({', '.join(arms or {}) or 'it names none'})")
    elif arms is not None:
        grid = {"arm": list(arms), **grid}
    points = math.prod(len(values) for values in grid.values())
    if points > MAX_POINTS:
        raise ToytasksError(f"{path}: grid: {points:,} points, more than the {MAX_POINTS:,} a sweep file may "
                            "hold; split it into several sweep files")
    return grid


# --- running ---------------------------------------------------------------------------------

def train_point(point: Point | Group, progress: bool = True) -> list[Path]:
    """Train one point (or group of points) in this process: skip it if finished, resume it if
    interrupted. A group's runs train as one stacked run; one whose loss turns non-finite is left
    failed (as its single run would be) and the others resume without it."""
    if point.status() == "finished":
        return point.run_dirs
    from .training import train_members

    todo, failed = list(point.members), []
    while todo:
        try:
            train_members(todo, resume=True, progress=progress)
            break
        except NonFiniteLoss as error:
            failed.append(error)
            if len(todo) > 1:
                print(f"{todo[error.run].run_dir}: {error}; the other runs go on", file=sys.stderr)
            todo = todo[:error.run] + todo[error.run + 1:]
    if failed:
        if len(failed) == 1 and len(point.members) == 1:
            raise failed[0]
        raise NonFiniteLoss(failed[0].step, f"{len(failed)} of {len(point.members)} runs stopped on a "
                                            f"non-finite loss, the first: {failed[0]}")
    return point.run_dirs


def list_points(sweep: Sweep, vmap: bool = False) -> list[str]:
    """The lines of `toytasks sweep FILE --list`: the number of points (with `vmap`, of groups),
    then one line each."""
    units = sweep.units(vmap)
    lines = [str(len(units))]
    for unit in units:
        dirs = unit.run_dirs
        more = f" (+{len(dirs) - 1} {'runs' if vmap else 'seeds'})" if len(dirs) > 1 else ""
        lines.append(f"{unit.index}\t{unit.status()}\t{dirs[0]}{more}\t{unit.label}")
    return lines


def run_sweep(sweep: Sweep, jobs: int = 1, say: Callable[[str], None] = print, vmap: bool = False) -> list[Point]:
    """Train every point that is not finished, `jobs` at a time, each in its own process (with
    `vmap`, each group of points as one stacked run in its own process).

    Every point's resolved config is written to its run directory before anything trains.
    Returns the points (or groups) that failed or were interrupted; the others run to the end
    regardless. A Ctrl-C or SIGTERM to this process stops the running points at the end of their
    step, each with a resumable checkpoint, and raises Interrupted after the summary.
    """
    if jobs < 1:
        raise ToytasksError(f"-j {jobs}: must be at least 1")
    units = sweep.units(vmap)
    total = len(units)
    if vmap:
        split = sweep.split_by()
        say(f"sweep {sweep.name}: {len(sweep.points)} points in {total} stacked run{'s' if total > 1 else ''}"
            + (f" (split by {', '.join(split)})" if split else ""))
    statuses = {unit.index: unit.status() for unit in units}
    todo = [unit for unit in units if statuses[unit.index] != "finished"]
    for unit in todo:
        if statuses[unit.index] != "broken":  # its worker will say what is wrong
            for member in unit.members:
                _write_config(member)
    for point in units:
        if statuses[point.index] == "finished":
            say(f"[{point.index + 1}/{total}] finished, skipped  {point.run_dirs[0]}  {point.label}")

    lock, trained, failed, interrupted, workers = threading.Lock(), [], [], [], {}
    env = worker_env(jobs)

    def run(point: Point) -> None:
        verb = "start" if statuses[point.index] == "new" else "resume"
        with lock:
            say(f"[{point.index + 1}/{total}] {verb}  {point.run_dirs[0]}  {point.label}")
        log = RunPaths(point.run_dirs[0]).train_log
        started = time.time()
        command = [sys.executable, "-m", "toytasks.cli", "sweep", str(sweep.path), *sweep.overrides,
                   "--index", str(point.index), "--no-progress", *(["--vmap"] if vmap else [])]
        # Appended to, never through a symlink planted in the run directory.
        with os.fdopen(os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), "a") as out:
            with lock:
                if stopping.is_set():
                    return
                workers[point.index] = worker = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            code = worker.wait()
            with lock:
                del workers[point.index]
        seconds = time.time() - started
        with lock:
            if code == 0:
                trained.append(point)
                say(f"[{point.index + 1}/{total}] done in {seconds:.0f} s  {point.run_dirs[0]}")
            elif code - 128 in (signal.SIGINT, signal.SIGTERM) or -code in (signal.SIGINT, signal.SIGTERM):
                interrupted.append(point)
                say(f"[{point.index + 1}/{total}] interrupted ({signal_name(abs(code) % 128)}) after {seconds:.0f} s: "
                    f"{_last_line(log)}")
            else:
                failed.append(point)
                say(f"[{point.index + 1}/{total}] FAILED (exit {code}) after {seconds:.0f} s: "
                    f"{_last_line(log)}  (log: {log})")

    stopping = threading.Event()
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        list(pool.map(run, todo))
    except Interrupted as stop:
        # Start no further point; the running ones stop at the end of their step, with a resumable
        # checkpoint (a SIGTERM: a worker that had the terminal's Ctrl-C too takes it as one request).
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with lock:
            running = list(workers.values())
        for worker in running:
            worker.send_signal(signal.SIGTERM)
        pool.shutdown(wait=True)
        _summary(sweep, units, todo, trained, failed, interrupted, say)
        n = len(interrupted)
        raise Interrupted(stop.signum, f"sweep {sweep.name} interrupted by {signal_name(stop.signum)}: "
                                       f"{n} point{'s' if n != 1 else ''} stopped with a resumable checkpoint; "
                                       "running the same command again resumes them") from None
    pool.shutdown()
    _summary(sweep, units, todo, trained, failed, interrupted, say)
    return sorted(failed + interrupted, key=lambda p: p.index)


def _summary(sweep: Sweep, units: list, todo: list, trained: list, failed: list, interrupted: list, say) -> None:
    """One line: how many points (or groups, with --vmap) finished before, trained now, failed or
    were interrupted, naming the last two."""
    total, done = len(units), len(trained)
    kind = "group" if units and isinstance(units[0], Group) else "point"
    listed = lambda points: "".join(f"{'; ' if i else ': '}{kind} {p.index} ({p.label})"
                                    for i, p in enumerate(sorted(points, key=lambda p: p.index)))
    line = (f"sweep {sweep.name}: {total} {kind}s, {total - len(todo)} already finished, {done} trained now, "
            f"{len(failed)} failed{listed(failed)}")
    if interrupted:
        line += f", {len(interrupted)} interrupted{listed(interrupted)}"
    say(line)


def _write_config(member: Config) -> None:
    """A point's resolved config into its run directory, under its lock; a run that another
    process is training already has its config."""
    try:
        with RunLock(member.run_dir, purpose="toytasks sweep, writing the config"):
            if not read_meta(member.run_dir).get("finished"):
                prepare_run_dir(member, resume=True, overwrite=False)
    except RunBusy:
        pass


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
    return one_line(lines[-1]) if lines else "(no output)"
