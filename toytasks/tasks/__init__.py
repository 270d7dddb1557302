"""Task registry. Every module in this folder is imported, so a new task is one new file."""
import importlib
import pkgutil
from typing import Any, Mapping

from ..errors import ConfigError
from ..schema import build
from .base import IGNORE, TASKS, Task, batch_from_split, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def task_from_config(data: Any, where: str = "task") -> Task:
    """Build the task a config names: `{name: modular_addition, p: 113, ...}`."""
    if not isinstance(data, Mapping) or "name" not in data:
        raise ConfigError(f"{where}.name", f"is required; known tasks: {', '.join(sorted(TASKS))}")
    name = data["name"]
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"{where}.name", f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return build(TASKS[name], {k: v for k, v in data.items() if k != "name"}, where)


__all__ = ["IGNORE", "TASKS", "Task", "batch_from_split", "register", "task_from_config"]
