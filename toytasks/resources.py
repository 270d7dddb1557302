"""Refuse, before anything is allocated, a run this machine cannot hold.

`check_fits(config)` estimates, from the config alone (no tensor is made), a lower bound of the
memory and disk a run needs, and compares it with what the machine has now: the memory available
(`MemAvailable` of /proc/meminfo, or psutil's; on a GPU also the device's free memory) and the free
space of the file system of `out_dir`. The estimate counts only what surely exists:

    the weights, their gradients and AdamW's two moments       4 x 4 bytes per parameter, per seed
    the activations of one forward pass                         4 bytes per value, per example
                                                                 (train batch and test split), per seed
    the data set: its tokens and targets on the device         2 x 8 bytes per token
    building it (a finite task's enumeration, as Python ints)   64 bytes per token
    the metrics table in memory (one row per step)              300 bytes per step
    the checkpoint schedule (a set of steps)                    64 bytes per scheduled step
    on disk: the checkpoint series and last.ckpt                4 bytes per parameter per file, per seed

so a refusal means the run could not have worked; a run that passes may still be close to the
limit. The refusal names the config field whose halving shrinks the estimate most (`task.p`,
`max_steps`, `model.d_model`, `batch_size`, ...).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from .config import Config
from .errors import ConfigError


def check_fits(config: Config) -> None:
    """A one-line ConfigError naming the field when the run needs more memory or disk than there is."""
    for kind, need, available in (("memory", _memory, available_memory), ("disk", _disk, free_disk)):
        needed, have = need(config), available(config)
        if have is None or needed <= have:
            continue
        field, value = culprit(config, need, have)
        raise ConfigError(field, f"{value} makes the run need at least {human(needed)} of {kind}, "
                                 f"more than the {human(have)} this machine has free; make it smaller")


def n_parameters(config: Config) -> int:
    m, task = config.model, config.task
    attention = 4 * m.n_heads * m.d_head * m.d_model + 3 * m.n_heads * m.d_head + m.d_model
    mlp = 0 if m.attn_only else 2 * m.d_model * m.d_mlp + m.d_mlp + m.d_model
    norms = 0 if m.normalization is None else 4 * m.d_model
    embed = (task.d_vocab + task.n_ctx) * m.d_model
    return embed + m.n_layers * (attention + mlp + norms) + m.d_model * task.d_vocab_out + task.d_vocab_out


def _activations_per_example(config: Config) -> int:
    m, task = config.model, config.task
    per_layer = 3 * m.d_model + 4 * m.n_heads * m.d_head + 2 * m.n_heads * task.n_ctx + (0 if m.attn_only else 2 * m.d_mlp)
    return task.n_ctx * (m.n_layers * per_layer + 2 * m.d_model + task.d_vocab_out)


def _examples(config: Config) -> tuple[int, int, int]:
    """(examples stored, examples per training step, examples per evaluation)."""
    task = config.task
    if not task.finite:
        return 0, config.batch_size or 1, 512
    total = task.n_examples
    return total, config.batch_size or task.n_train, total - task.n_train


def _n_series(config: Config) -> int:
    every, steps = config.checkpoints.every, config.max_steps
    logs = min(every, steps).bit_length() if config.checkpoints.log_spaced else 0
    return steps // every + 2 + logs + len(config.checkpoints.steps)


def _memory(config: Config) -> int:
    runs = len(config.seeds or [None])
    stored, train, evaluate = _examples(config)
    tokens = stored * config.task.n_ctx
    finite_build = 64 * tokens if config.task.finite else 0
    return (runs * (16 * n_parameters(config) + 4 * _activations_per_example(config) * (train + evaluate))
            + 16 * tokens + finite_build + 300 * config.max_steps + 64 * _n_series(config))


def _disk(config: Config) -> int:
    runs = len(config.seeds or [None])
    return runs * 4 * n_parameters(config) * (_n_series(config) + 3)


def culprit(config: Config, need, have: int) -> tuple[str, object]:
    """The field to blame, with its value: of those that alone can bring `need(config)` under
    `have` by halving it, the one that needs the fewest halvings (ties: the biggest first gain);
    when none can alone, the one whose halving shrinks it most."""
    base, ranked = need(config), []
    for field_and_value, halved in _halvings(config):
        smaller, count, first_gain = config, 0, None
        try:
            while count < 64:
                smaller, count = halved(smaller), count + 1
                needed = need(smaller)
                first_gain = base - needed if first_gain is None else first_gain
                if needed <= have:
                    break
        except (ConfigError, ValueError, ZeroDivisionError):
            pass  # halving it further makes an invalid config
        if first_gain:
            fixes = need(smaller) <= have
            ranked.append(((0 if fixes else 1, count if fixes else 0, -first_gain), field_and_value))
    return min(ranked)[1] if ranked else ("max_steps", config.max_steps)


def _halvings(config: Config):
    """(field and value, a function halving that field of a config), for the fields that size a run."""
    def halve(section, name):
        def halved(c: Config) -> Config:
            if section is None:
                return dataclasses.replace(c, **{name: getattr(c, name) // 2})
            part = getattr(c, section)
            return dataclasses.replace(c, **{section: dataclasses.replace(part, **{name: getattr(part, name) // 2})})
        return halved

    for f in dataclasses.fields(config.task):
        value = getattr(config.task, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            yield (f"task.{f.name}", value), halve("task", f.name)
    for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
        yield (f"model.{name}", getattr(config.model, name)), halve("model", name)
    yield ("max_steps", config.max_steps), halve(None, "max_steps")
    if config.batch_size:
        yield ("batch_size", config.batch_size), halve(None, "batch_size")
    if config.seeds and len(config.seeds) > 1:
        yield ("seeds", f"{len(config.seeds)} seeds"), lambda c: dataclasses.replace(c, seeds=c.seeds[:len(c.seeds) // 2])


def available_memory(config: Config) -> int | None:
    """Bytes of memory free for a new run: the host's available memory, or on a GPU the smaller
    of that and the device's free memory."""
    host = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                host = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if host is None:
        try:
            import psutil

            host = psutil.virtual_memory().available
        except ImportError:
            return None
    import torch

    if config.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return min(host, free)
    return host


def free_disk(config: Config) -> int | None:
    """Free space where the runs go, plus what their checkpoints already take (a resumed run
    replaces its last.ckpt and keeps its series)."""
    path = Path(os.path.abspath(config.out_dir))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    for member in config.members:
        for directory in (member.run_dir, member.run_dir / "series"):
            if directory.is_dir():
                free += sum(f.stat().st_size for f in directory.glob("*") if f.is_file() and not f.is_symlink())
    return free


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"
