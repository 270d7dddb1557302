"""Which runs can train together, in one process, as one stacked (vmapped) run.

A seed ensemble (`seeds:`) and a hyperparameter grid (`toytasks sweep FILE --vmap`) stack the
parameters of several runs of one architecture and task and train them in one forward and
backward pass (toytasks/training/replicas.py). The runs may differ in what only sets their
initial weights (built per run) and in the optimizer's per-run values (RunsAdamW, optim.py);
everything else (the task and its data, the architecture, the schedule, clipping, the step counts
and what is recorded when) is shared, since one loop drives them all.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .config import Config
from .errors import ConfigError

PER_RUN = (
    "seed",  # data order and, unless model.seed is set, the initial weights
    "model.seed", "model.init",  # the initial weights
    "model.init_scale",  # the initial weights (issue 16's field, once it exists)
    "optim.lr", "optim.weight_decay",  # RunsAdamW takes one of each per run
)


def flat(config: Config) -> dict[str, Any]:
    """The config as {dotted field: value} (lists and tuples are values)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            out[prefix[:-1]] = node

    data = config.to_dict()
    data.pop("seeds", None)
    walk("", data)
    return out


def shared_fields(config: Config) -> dict[str, Any]:
    """What must be equal for runs to train together: every field but the per-run ones."""
    return {k: v for k, v in flat(config).items() if k not in PER_RUN}


def differing_field(configs: Sequence[Config]) -> Optional[str]:
    """The first shared field on which the configs disagree, or None if they can train together."""
    first = shared_fields(configs[0])
    for config in configs[1:]:
        other = shared_fields(config)
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                return key
    return None


def check_group(configs: Sequence[Config]) -> None:
    field = differing_field(configs)
    if field is not None:
        raise ConfigError(field, "differs between runs trained together (one stacked run); only "
                                 f"{', '.join(PER_RUN)} may differ")
    # One optimizer step updates every run, and one device holds them.
    if configs[0].on_nonfinite != "stop":
        raise ConfigError("on_nonfinite", "runs trained together (seeds, a grid) support only `stop`")
    if configs[0].trainer.world_size != 1:
        raise ConfigError("trainer.devices", "runs trained together (seeds, a grid) train on one device")
    run_dirs = [c.run_dir for c in configs]
    if len(set(run_dirs)) != len(run_dirs):
        raise ConfigError("seed", "two runs trained together are the same run")


def optimizers_differ(configs: Sequence[Config]) -> bool:
    """Do the runs need one learning rate or weight decay each (RunsAdamW, not torch's AdamW)?"""
    return len({(c.optim.lr, c.optim.weight_decay) for c in configs}) > 1


def differing_beyond_seeds(configs: Sequence[Config]) -> bool:
    """A grid (hyperparameters differ), not a seed ensemble (only the seeds do)?"""
    strip = lambda c: {k: v for k, v in flat(c).items() if k not in ("seed", "model.seed")}  # noqa: E731
    return any(strip(c) != strip(configs[0]) for c in configs[1:])
