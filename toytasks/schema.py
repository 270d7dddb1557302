"""Build frozen dataclasses from plain YAML data, with one-line errors that name the field.

Only the types configs use are supported: bool, int, float, str, Optional[...], tuple[T, ...]
of fixed length, list[T], and nested dataclasses. An int is accepted where a float is asked for;
nothing else is coerced (`max_steps: abc` or `max_steps: true` is an error, not a surprise).
Numbers must be finite (`.nan` and `.inf` are errors) and integers fit in 64 bits (torch's).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Mapping

from .errors import ConfigError, short

INT_LIMIT = 2 ** 63  # integers are torch int64 values (seeds, sizes)

_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def build(cls: type, data: Any, where: str = ""):
    """`cls(**data)` after checking keys and value types; errors are prefixed with `where`."""
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"expected a mapping of fields, got {short(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise ConfigError(_join(where, str(unknown[0])),
                          f"unknown key; allowed: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    values = {name: convert(hints[name], value, _join(where, name)) for name, value in data.items()}
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(_join(where, missing[0]), "is required")
    try:
        return cls(**values)
    except ConfigError as error:  # raised by __post_init__ with the field's own name
        raise error.within(where) if where else error


def convert(tp: Any, value: Any, where: str):
    """Check (and for int -> float, convert) one value against a type hint."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(options[0], value, where)
        raise TypeError(f"unsupported union {tp}")
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(where, f"expected a list of {len(args)} values, got {short(value)}")
        return tuple(convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {short(value)}")
        return [convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"expected a mapping, got {short(value)}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = _check_int(value, where)
        return float(value)
    if tp in _TYPE_WORDS:
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            if tp is int:
                return _check_int(value, where)
            if tp is float and not math.isfinite(value):
                raise ConfigError(where, f"must be a finite number, got {value}")
            return value
        raise ConfigError(where, f"expected {_TYPE_WORDS[tp]}, got {short(value)}")
    raise TypeError(f"unsupported config type {tp}")


def _check_int(value: int, where: str) -> int:
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise ConfigError(where, f"{short(value)} is out of range (integers are 64-bit)")
    return value


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts/lists (what YAML stores)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
