"""Typed dataclass configs from YAML files and CLI overrides, with errors that name the field."""
from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and values of the wrong type:
    a typo, or `normalize: maybe`, must not pass silently (a non-empty string is truthy)."""
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of options (KEY: value), got {data!r}")
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; expected some of {sorted(names)}")
    hints = typing.get_type_hints(cls)
    values = {k: checked(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**values)
    except ValueError as e:  # the config's own range checks name the key; add the file it came from
        source = where.rpartition(": ")[0]
        raise ValueError(f"{source}: {e}" if source else str(e)) from None


def at_least(where: str, cfg: Any, names: tuple[str, ...], low: float, strict: bool = False) -> None:
    """A config's range check: each named field (None allowed) is >= low (> low if strict)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (value <= low if strict else value < low):
            raise ValueError(f"{where}.{name} must be {'>' if strict else '>='} {low}, got {value}")


def probabilities(where: str, cfg: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"{where}.{name} is a probability and must lie in [0, 1), got {value}")


def checked(value: Any, hint: Any, where: str) -> Any:
    """`value` if it has type `hint`; a number YAML read as text (PyYAML reads `1e-3` as a
    string) becomes a float where a float is expected; anything else is an error naming `where`."""
    if _conforms(value, hint):
        return value
    if isinstance(value, str) and _conforms(1.5, hint):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: expected {_expected(hint)}, got {value!r}")


def _options(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether `value` has type `hint`; a type it does not know (a custom op's) accepts."""
    for h in _options(hint):
        origin, args = typing.get_origin(h), typing.get_args(h)
        if h is type(None) or h is bool:
            ok = value is None if h is type(None) else isinstance(value, bool)
        elif h in (int, float):
            ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if h is int else numbers.Real)
        elif h in (str, list, dict):
            ok = isinstance(value, h)
        elif dataclasses.is_dataclass(h):
            ok = isinstance(value, (h, dict))         # the nested dataclass checks its own fields
        elif origin is list:
            ok = isinstance(value, list) and (not args or all(_conforms(v, args[0]) for v in value))
        elif origin is dict:
            ok = isinstance(value, dict) and (not args or all(_conforms(v, args[1]) for v in value.values()))
        else:
            ok = True                                 # Any, or a type this check does not know
        if ok:
            return True
    return False


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _expected(hint: Any) -> str:
    def one(h):
        origin = typing.get_origin(h)
        if origin is list:
            return f"a list ({_expected(typing.get_args(h)[0])} each)" if typing.get_args(h) else "a list"
        if origin is dict or h is dict or dataclasses.is_dataclass(h):
            return "a mapping"
        return _NAMES.get(h, getattr(h, "__name__", str(h)))
    return " or ".join(one(h) for h in _options(hint))


def read_yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    return data


def override(cfg: T, **values: Any) -> T:
    """Replace the fields given (not None), as CLI flags override a config file."""
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if v is not None})


SECTIONS = ("etl", "workflow", "model", "train", "serve")


def read_section(path: str | None, name: str) -> dict[str, Any]:
    """One section of a rayrec config file (empty when absent); unknown sections are errors."""
    data = read_yaml(path)
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}")
    return data.get(name) or {}
