"""Progress measures: a registry, like the task registry. A measure is one file in this folder.

A measure is a class registered with `@register` that declares:

    name          its key in a config: `measures: {fourier: {}}`
    Options       a frozen dataclass of its options (a MeasureOptions: `every`, and its own)
    prefixes      the prefixes of the metric names it writes, e.g. ("fourier/",)
    summary_file  the JSON file it writes into the run directory when training ends, or None
    by_default    whether `toytasks measure` computes it on runs it applies to that were trained
                  without it (True unless it is expensive)
    why_not(task, model_cfg)              None when it applies, else why not (a config error)
    check_options(options, task)          raise a ConfigError for options the task cannot take
                                          (optional)
    __init__(options, config, dataset)    built once per run from its options, the run's config
                                          and its stored data (None for sampled tasks)
    __call__(model) -> {metric: 0-d tensor}
                  its values at one checkpoint: a pure function of the model and the fixed
                  evaluation data it built, on the model's device, without a host sync
    after_training(model_at, steps, final_model) -> {step: {metric: float}}
                  values that need the whole series (optional)
    measure_series(model_at, steps) -> {step: {metric: float}}, or an iterator of (step, row)
                  every value of a saved series (`toytasks measure`); an iterator's rows are
                  written as they come, so an interrupted run keeps them (optional)
    paths         the run directory's RunPaths when built for a saved run (`run.measure(name)`),
                  where a measure may keep files of its own (`paths.measure_dir(name)`); else None
    summary(options, metrics) -> dict     end-of-run numbers from the metrics table (optional)
    figures(run) -> {file name: Figure}   what `toytasks plot` draws (optional)

Training (toytasks/training/), `toytasks measure`, `toytasks plot` and the run-set summaries loop
over MEASURES and never name a measure. Measures import no Lightning and nothing above them.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, ClassVar, Iterable, Optional

import torch

from ..errors import ConfigError
from ..schema import build

MEASURES: dict[str, type["Measure"]] = {}


@dataclasses.dataclass(frozen=True)
class MeasureOptions:
    """What every measure's options have: when it runs."""

    every: Optional[int] = None
    """Evaluate every this many steps; null evaluates at the checkpoint-series steps."""

    def __post_init__(self):
        if self.every is not None and self.every < 1:
            raise ConfigError("every", f"must be at least 1 or null, got {self.every}")


class Measure:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = MeasureOptions
    prefixes: ClassVar[tuple[str, ...]] = ()
    summary_file: ClassVar[Optional[str]] = None
    by_default: ClassVar[bool] = True
    paths = None  # set by run.measure(name) for a saved run

    def __init__(self, options, config, dataset=None):
        self.options, self.config, self.task = options, config, config.task

    @classmethod
    def why_not(cls, task, model_cfg) -> Optional[str]:
        return None

    @classmethod
    def check_options(cls, options, task) -> None:
        pass

    def __call__(self, model) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_training(self, model_at: Callable[[int], Any], steps: list[int], final_model) -> dict[int, dict]:
        return {}

    def measure_series(self, model_at: Callable[[int], Any], steps: list[int]) -> dict[int, dict]:
        """Every value of a saved series, as `toytasks measure` writes it: each checkpoint, then
        what needs the whole series. A measure may do it in fewer passes."""
        rows = {step: {k: float(v) for k, v in self(model_at(step)).items()} for step in steps}
        for step, row in self.after_training(model_at, steps, model_at(steps[-1])).items():
            rows.setdefault(step, {}).update(row)
        return rows

    @classmethod
    def summary(cls, options, metrics) -> dict:
        return {}

    @classmethod
    def figures(cls, run) -> dict:
        return {}

    def due(self, step: int, series_steps: frozenset[int]) -> bool:
        every = self.options.every
        return step % every == 0 if every else step in series_steps


def register(cls: type[Measure]) -> type[Measure]:
    """Class decorator: make a measure available to configs under `cls.name`."""
    if not cls.name or cls.name in MEASURES:
        raise ValueError(f"measure name {cls.name!r} is empty or taken")
    MEASURES[cls.name] = cls
    return cls


def measure_options(name: str, options: Optional[dict], task, model_cfg):
    """A measure's options from a config (defaults filled in), after checking that it applies."""
    if name not in MEASURES:
        raise ConfigError(f"measures.{name}", f"unknown measure; known measures: {', '.join(sorted(MEASURES))}")
    cls = MEASURES[name]
    reason = cls.why_not(task, model_cfg)
    if reason:
        raise ConfigError(f"measures.{name}", reason)
    built = build(cls.Options, options or {}, f"measures.{name}")
    cls.check_options(built, task)
    return built


def check_measures(config) -> None:
    """The one-line config error for a measure that is unknown, badly set or does not apply."""
    for name, options in config.measures.items():
        measure_options(name, options, config.task, config.model)


def build_measures(config, dataset=None, names: Optional[Iterable[str]] = None) -> list[Measure]:
    """The measures of a run: those its config switches on (or those named), built for it."""
    names = config.measures if names is None else names
    return [MEASURES[name](measure_options(name, config.measures.get(name), config.task, config.model),
                           config, dataset) for name in names]


def applicable(config, include_optional: bool = False) -> list[str]:
    """The measures a run's config switches on, plus every other measure that applies to its task
    and model (those `by_default`, unless include_optional)."""
    extra = [name for name, cls in MEASURES.items() if name not in config.measures
             and (cls.by_default or include_optional) and cls.why_not(config.task, config.model) is None]
    return [*config.measures, *extra]


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MEASURES", "Measure", "MeasureOptions", "applicable", "build_measures", "check_measures",
           "measure_options", "register"]
