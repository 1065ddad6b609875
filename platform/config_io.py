"""Typed dataclass configs from YAML files and CLI overrides, with errors that name the field."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys (typos must not pass silently)."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; expected some of {sorted(names)}")
    return cls(**data)


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
