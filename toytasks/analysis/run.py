"""A trained run as notebooks see it: `run = load_run(path)`.

    run.config        the resolved Config the run was trained with
    run.task          its task (`run.task.p`, `run.task.make_dataset()`, ...)
    run.dataset       the stored DatasetDict (train / test), or None for sampled tasks
    run.batch(split)  its `tokens` and `targets` as tensors (finite tasks)
    run.sample(n)     n fresh examples of a sampled task, from their own seeded generator
    run.steps         the sorted steps of the checkpoint series
    run.model_at(s)   a TransformerBridge with the weights after s steps (CPU, eval mode)
    run.models()      (step, model) over the series
    run.map(fn, name) fn(model) at every checkpoint as a DataFrame, cached in the run directory
                      (or, for a run you cannot write to, in ~/.cache/toytasks/)
    run.metrics       a pandas DataFrame: a `step` column and one column per metric
    run.measure(name) a progress measure (toytasks/measures/) built for this run: `run.map(run.measure("heads"), "heads")`
    run.essential_dynamics()  the outputs' principal components over training (analysis/essential_dynamics.py)
    run.paths         where its files are (toytasks/layout.py)
"""
from __future__ import annotations

import errno
import functools
import hashlib
import numbers
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..config import Config, config_from_dict, read_yaml
from ..data import sample_seed
from ..errors import ConfigError, ToytasksError, ToytasksWarning, first_line
from ..files import WriteError, write_atomically
from ..layout import RunPaths
from ..metrics_table import read_frame
from ..model import apply_frozen_parts, build_model
from ..storage import load_weights
from ..tasks import batch_from_split

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.paths = RunPaths(self.path)
        if not self.paths.is_run():
            raise ToytasksError(f"{self.path}: not a run directory (no {self.paths.config.name})")
        try:
            self.config: Config = config_from_dict(read_yaml(self.paths.config))
        except ConfigError as error:  # read_yaml's own errors name the file
            raise ToytasksError(f"{self.paths.config}: {first_line(error)}") from None
        self._cache_elsewhere = False  # run.map's tables go to cache_dir() (the run is read-only)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, task={self.task.name}, steps={len(self.steps)})"

    @property
    def task(self):
        return self.config.task

    @functools.cached_property
    def dataset(self):
        if not self.task.finite:
            return None
        from datasets import load_from_disk

        return load_from_disk(str(self.paths.data))

    def batch(self, split: str = "test") -> dict:
        """The `tokens` and `targets` (and `attention_mask`) tensors of a stored split."""
        if self.dataset is None:
            raise ToytasksError(f"{self.path}: {self.task.name} samples its data; use run.sample(n)")
        return batch_from_split(self.dataset[split])

    def sample(self, n: int, seed: int = 0) -> dict:
        """n examples of a sampled task, drawn on the CPU from a generator seeded from `seed`, so
        the same call always gives the same batch, and never from one of the run's own data
        streams (toytasks.data.sample_seed)."""
        if self.task.finite:
            raise ToytasksError(f"{self.path}: {self.task.name} is a finite task; use run.batch(split)")
        try:
            generator_seed = sample_seed(seed, self.config.seed, self.config.trainer.world_size)
        except ValueError as error:
            raise ToytasksError(f"run.sample: {error}") from None
        return self.task.sample(n, torch.Generator().manual_seed(generator_seed))

    @property
    def steps(self) -> list[int]:
        """Steps with a complete series file."""
        return self.paths.saved_steps()

    def model_at(self, step: int):
        """The model after `step` optimizer steps, on the CPU, in eval mode."""
        path = self.paths.series(step)
        if not path.exists():
            raise ToytasksError(f"{path}: no checkpoint at step {step}; saved steps: "
                                f"{_abbreviate(self.steps)}")
        state = load_weights(path)
        model = build_model(self.config.model, self.task, seed=self.config.model_seed)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            lines = str(error).strip().splitlines()
            raise ToytasksError(f"{path}: does not fit this run's model config ({' '.join(lines[:2])})") from None
        apply_frozen_parts(model, self.config.model)
        return model.eval()

    def select_steps(self, every: int | None = None, steps=None) -> list[int]:
        """Saved steps: all of them, those listed in `steps`, or the multiples of `every` plus
        the last one (with log-spaced checkpoints, `every=100` skips the early 1, 2, 4, ...)."""
        saved = self.steps
        if steps is not None:
            if every is not None:
                raise ToytasksError("give `every` or `steps`, not both")
            missing = sorted(set(steps) - set(saved))
            if missing:
                raise ToytasksError(f"{self.path}: no checkpoint at steps {_abbreviate(missing)}; "
                                    f"saved steps: {_abbreviate(saved)}")
            return sorted(set(steps))
        if every is None:
            return saved
        if every < 1:
            raise ToytasksError(f"every must be at least 1, got {every}")
        return [s for s in saved if s % every == 0 or s == saved[-1]]

    def models(self, every: int | None = None, steps=None) -> Iterator[tuple[int, object]]:
        """`for step, model in run.models(every=100):` a fresh model per step, loaded lazily."""
        for step in self.select_steps(every, steps):
            yield step, self.model_at(step)

    def map(self, fn: Callable, name: str, every: int | None = None, steps=None,
            recompute: bool = False, progress: bool = True):
        """fn(model) at each checkpoint (under torch.no_grad()), as a DataFrame with a `step` column.

        fn returns a dict of numbers (plain or 1-element tensors), one column each, or a single
        number (the column `name`). Results are cached in `analysis/<name>.csv` in the run
        directory, keyed by `name` alone: a later call computes only the steps missing from the
        cache (new checkpoints of a resumed run, or steps outside an earlier `every`), so the
        second call loads no checkpoint, and an interrupted call keeps what it computed. After
        changing fn, pass `recompute=True` or a new name, or the old values come back.
        """
        import pandas as pd

        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ToytasksError(f"run.map: name {name!r} must be a file name: letters, digits, _ . = + -")
        wanted = self.select_steps(every, steps)
        cached = self._read_cache(name) if not recompute else None
        done = set() if cached is None else set(cached["step"])
        todo = [s for s in wanted if s not in done]
        rows = []
        try:
            for step in checkpoint_progress(todo, progress and len(todo) > 1, name):
                with torch.no_grad():
                    rows.append({"step": step, **_numbers(fn(self.model_at(step)), name)})
        finally:  # an interrupted or failing map keeps what it computed
            if rows:
                cached = pd.concat([t for t in (cached, pd.DataFrame(rows)) if t is not None], ignore_index=True)
                cached = cached.sort_values("step", ignore_index=True)
                self._write_cache(name, cached)
        if cached is None:  # an empty series
            return pd.DataFrame({"step": pd.Series([], dtype=int)})
        return cached[cached["step"].isin(wanted)].reset_index(drop=True)

    def _read_cache(self, name: str):
        import pandas as pd

        for path in (self.cache_dir() / f"{name}.csv", self.paths.analysis / f"{name}.csv"):
            if path.exists():  # the one elsewhere first: written only after this one could not be
                try:
                    return pd.read_csv(path)
                except (ValueError, OSError) as error:
                    raise ToytasksError(f"{path}: unreadable ({first_line(error)}); delete it, or "
                                        "pass recompute=True") from None
        return None

    def _write_cache(self, name: str, table) -> None:
        if not self._cache_elsewhere:
            try:
                write_atomically(self.paths.analysis / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False))
                return
            except WriteError as error:
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
            self._cache_elsewhere = True
            warnings.warn(f"{self.path} is read-only: run.map caches its tables in {self.cache_dir()}",
                          ToytasksWarning)
        write_atomically(self.cache_dir() / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False))

    def cache_dir(self) -> Path:
        """Where run.map caches its tables when the run directory is read-only: $TOYTASKS_CACHE, else
        $XDG_CACHE_HOME/toytasks, else ~/.cache/toytasks; one folder per run (by its absolute path)."""
        root = os.environ.get("TOYTASKS_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "toytasks")
        key = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        return Path(root) / "analysis" / f"{self.config.run_id}-{key}"

    @property
    def metrics(self):
        """The metrics table; empty (a `step` column only) while the run has logged nothing yet."""
        import pandas as pd

        path = self.paths.metrics
        return read_frame(path) if path.exists() else pd.DataFrame({"step": pd.Series([], dtype=int)})

    def measure_options(self, name: str, options: dict | None = None):
        """A measure's options for this run: as configured (or its defaults), with `options` over them."""
        from ..measures import measure_options

        return measure_options(name, {**(self.config.measures.get(name) or {}), **(options or {})},
                               self.task, self.config.model)

    def measure(self, name: str, options: dict | None = None):
        """A progress measure built for this run (its configured options, or the defaults, with
        `options` over them): `measure(model)` gives its values at one checkpoint, e.g.
        `run.map(run.measure("heads"), "heads")`."""
        from ..measures import MEASURES

        measure = MEASURES[name](self.measure_options(name, options), self.config, self.dataset)
        measure.paths = self.paths  # where it may keep files of its own
        return measure

    def essential_dynamics(self, n_components: int = 3, n_examples: int = 1024, every: int | None = None,
                           steps=None, seed: int = 0):
        """The model's outputs on a fixed batch at each checkpoint, projected on their principal
        components over training (Hoogland et al. 2024): a DataFrame (step, PC1, PC2, ...), its
        explained variance in `.attrs`. Draw it with `toytasks.analysis.essential_dynamics.plot_trajectory`."""
        from .essential_dynamics import essential_dynamics

        return essential_dynamics(self, n_components, n_examples, self.select_steps(every, steps), seed)


def load_run(path: str | Path) -> Run:
    return Run(path)


def _numbers(value, name: str) -> dict:
    """fn's result as {column: number}."""
    items = value.items() if isinstance(value, dict) else [(name, value)]
    row = {}
    for key, number in items:
        if isinstance(number, torch.Tensor) and number.numel() == 1:
            number = number.item()
        if hasattr(number, "item") and getattr(number, "size", None) == 1:  # a numpy scalar
            number = number.item()
        if not isinstance(number, numbers.Number):
            what = f"a tensor of shape {list(number.shape)}" if hasattr(number, "shape") else type(number).__name__
            raise ToytasksError(f"run.map: fn gave {what} for {key!r}; return a dict of numbers (one column each)")
        row[key] = number
    return row


def checkpoint_progress(steps: list[int], show: bool, name: str):
    """`steps`, with a progress bar when `show` (for loops that load one checkpoint per step)."""
    if not show:
        return steps
    from tqdm import tqdm  # the text bar: tqdm.auto asks for ipywidgets in notebooks

    return tqdm(steps, desc=name, unit="ckpt")


def _abbreviate(steps: list[int]) -> str:
    return str(steps) if len(steps) <= 8 else f"[{steps[0]}, {steps[1]}, ..., {steps[-1]}] ({len(steps)})"
