"""A sweep's search space (SPACE.yaml): which `model.` and `train.` keys vary, how, and
under which conditions; and the trials it expands to.

    model.arch: {grid: [gpt2, xlnet]}
    model.masking: {grid: [clm, mlm, {value: plm, when: {model.arch: xlnet}}]}
    model.d_model: {choice: [64, 128]}
    model.n_head: {choice: [2, 4, 8], divides: model.d_model}
    model.mlm_probability: {uniform: [0.1, 0.4], when: {model.masking: [mlm, rtd]}}
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}
    train.epochs: {randint: [2, 6]}          # both ends included
    train.batch_size: 256                    # a plain value: fixed for every trial

`grid` values are all tried (every combination of the grid keys, for each sample); the other
distributions are drawn once per sample. `when` makes a key (or one option of a grid or
choice) apply only where other keys have the given value(s); elsewhere the key keeps the
base config's value. `divides` keeps only the values that divide another key's value.

The trials are drawn here, in the driver, from one seeded generator, so a sweep is the same
list of trials every time it is started with the same space and seed; conditions need no
code from the YAML (nothing is evaluated).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from rayrec.config_io import checked, from_dict
from rayrec.models.config import ModelConfig
from rayrec.train.config import TrainConfig

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


@dataclass
class Option:
    value: Any
    when: dict[str, list] = field(default_factory=dict)


@dataclass
class Param:
    key: str                           # "model.d_model"
    kind: str                          # one of DISTRIBUTIONS, or "fixed"
    options: list[Option] = field(default_factory=list)   # choice, grid, fixed
    low: float = 0.0                   # uniform, loguniform, randint
    high: float = 0.0
    when: dict[str, list] = field(default_factory=dict)
    divides: str | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}: {self.key}" if self.line else self.key


@dataclass
class Space:
    params: list[Param]                # in an order where every key comes after those it depends on
    source: str = "SPACE.yaml"

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def trials(self, samples: int, seed: int, base: dict[str, Any]) -> list[dict[str, Any]]:
        """`samples` x (every grid combination) trials, each the {key: value} it sets;
        `base` gives the value of any key a condition reads that the trial does not set."""
        rng = np.random.default_rng(seed)
        out: list[dict[str, Any]] = []
        for _ in range(samples):
            out += self._expand(0, {}, rng, base)
        return out

    def _expand(self, i: int, chosen: dict, rng, base: dict) -> list[dict]:
        if i == len(self.params):
            return [dict(chosen)]
        p = self.params[i]
        if not _holds(p.when, chosen, base):
            return self._expand(i + 1, chosen, rng, base)
        values = [o.value for o in p.options if _holds(o.when, chosen, base)] if p.options else None
        if values is not None and p.divides:
            total = chosen.get(p.divides, base.get(p.divides))
            values = [v for v in values if total % v == 0]
        if values is not None and not values:
            raise ValueError(f"{self.source}: {p.where}: no value left where {describe(chosen)}")
        if p.kind in ("grid", "fixed"):
            return [t for v in values for t in self._expand(i + 1, {**chosen, p.key: v}, rng, base)]
        return self._expand(i + 1, {**chosen, p.key: self._draw(p, values, rng)}, rng, base)

    @staticmethod
    def _draw(p: Param, values: list | None, rng) -> Any:
        if p.kind == "choice":
            return values[int(rng.integers(len(values)))]
        if p.kind == "uniform":
            return float(rng.uniform(p.low, p.high))
        if p.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(p.low), math.log(p.high))))
        return int(rng.integers(int(p.low), int(p.high) + 1))   # randint: both ends included


class OptunaSpace:
    """The space as an Optuna define-by-run function (Optuna then draws each trial, and its
    conditions hold as in `Space.trials`); a class, since Tune pickles its searcher. A
    parameter whose values depend on others (an option's `when`, `divides`) is named by the
    values left, since Optuna wants one fixed set of values per name (not with `/`, which
    Tune reads as nesting); `from_optuna` reads the key before the `|`."""

    def __init__(self, space: Space, base: dict[str, Any]):
        self.space, self.base = space, base

    def __call__(self, trial) -> dict[str, Any] | None:
        chosen: dict[str, Any] = {}
        base = self.base
        for p in self.space.params:
            if not _holds(p.when, chosen, base):
                continue
            if p.options:
                values = [o.value for o in p.options if _holds(o.when, chosen, base)]
                if p.divides:
                    total = chosen.get(p.divides, base.get(p.divides))
                    values = [v for v in values if total % v == 0]
                if not values:
                    raise ValueError(f"{self.space.source}: {p.where}: no value left where {describe(chosen)}")
                name = p.key if len(values) == len(p.options) else f"{p.key}|{','.join(map(str, values))}"
                chosen[p.key] = values[0] if p.kind == "fixed" else trial.suggest_categorical(name, values)
            elif p.kind == "randint":
                chosen[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high))
            else:
                chosen[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.kind == "loguniform")
        fixed = {p.key: p.options[0].value for p in self.space.params if p.kind == "fixed" and p.key in chosen}
        return fixed or None


def from_optuna(config: dict[str, Any]) -> dict[str, Any]:
    """Optuna's parameter names back to space keys."""
    return {k.split("|", 1)[0]: v for k, v in config.items()}


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's {key: value} in Tune's config: from the drawn list (random, grid), or as
    Optuna named them."""
    return config["params"] if "params" in config else from_optuna(config)


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) \
        or "(no parameters)"


def _holds(when: dict[str, list], chosen: dict, base: dict) -> bool:
    return all(chosen.get(k, base.get(k)) in values for k, values in when.items())


def base_values(model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The base config as flat {"model.d_model": 64, ...} values."""
    return {f"{section}.{k}": v for section, cfg in (("model", model), ("train", train))
            for k, v in dataclasses.asdict(cfg).items()}


def apply(model: ModelConfig, train: TrainConfig, params: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The base configs with a trial's values set (the configs check them as usual)."""
    by = {"model": {}, "train": {}}
    for key, value in params.items():
        section, name = key.split(".", 1)
        by[section][name] = value
    m = dataclasses.asdict(model) | by["model"]
    t = dataclasses.asdict(train) | by["train"]
    return from_dict(ModelConfig, m, "model"), from_dict(TrainConfig, t, "train")


def load_space(path: str) -> Space:
    """Read and check SPACE.yaml; every mistake names the key and its line."""
    with open(path) as f:
        text = f.read()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ValueError(f"{path}: expected a mapping of `model.KEY` / `train.KEY` to a distribution")
    params = []
    for key_node, value_node in root.value:
        key, line = str(key_node.value), key_node.start_mark.line + 1
        value = yaml.safe_load(yaml.serialize(value_node))
        params.append(_param(path, key, value, line))
    if not params:
        raise ValueError(f"{path}: the space sets no key")
    return Space(_ordered(path, params), source=path)


def _field_names() -> dict[str, set[str]]:
    return {s: {f.name for f in dataclasses.fields(cls)} for s, cls in SECTIONS.items()}


def check_key(path: str, key: str, line: int | None) -> None:
    at = f"{path}: line {line}: {key}" if line else f"{path}: {key}"
    section, _, name = key.partition(".")
    names = _field_names()
    if section not in names or not name:
        raise ValueError(f"{at}: a space key is `model.NAME` or `train.NAME`")
    if name not in names[section]:
        close = sorted(n for n in names[section] if n.split("_")[0] == name.split("_")[0])[:5]
        raise ValueError(f"{at}: {name!r} is not a field of {section}:" + (f" (did you mean {close}?)" if close else
                         f"; see docs/model-config.md and `rayrec train --help`"))


def _param(path: str, key: str, value: Any, line: int) -> Param:
    check_key(path, key, line)
    at = f"{path}: line {line}: {key}"
    if not isinstance(value, dict):
        return Param(key, "fixed", [Option(_typed(key, value, at))], line=line)
    spec = dict(value)
    when = _when(path, spec.pop("when", {}), at)
    divides = spec.pop("divides", None)
    if divides is not None:
        check_key(path, str(divides), line)
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    extra = sorted(set(spec) - set(DISTRIBUTIONS))
    if extra or len(kinds) != 1:
        what = f"unknown distribution {extra[0]!r}" if extra else "no distribution" if not kinds else \
            f"more than one distribution {kinds}"
        raise ValueError(f"{at}: {what}; expected one of {', '.join(DISTRIBUTIONS)} "
                         "(with optional when: and divides:)")
    kind, arg = kinds[0], spec[kinds[0]]
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            raise ValueError(f"{at}: {kind} needs a non-empty list of values")
        options = [Option(_typed(key, o["value"], at), _when(path, o.get("when", {}), at))
                   if isinstance(o, dict) and "value" in o else Option(_typed(key, o, at)) for o in arg]
        return Param(key, kind, options, when=when, divides=divides, line=line)
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)):
        raise ValueError(f"{at}: {kind} needs [low, high]; got {arg!r}")
    low, high = arg
    if not low <= high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"{at}: {kind} needs low <= high" + (" and low > 0" if kind == "loguniform" else ""))
    if kind == "randint" and not all(float(v).is_integer() for v in arg):
        raise ValueError(f"{at}: randint needs integer bounds; got {arg!r}")
    return Param(key, kind, low=low, high=high, when=when, divides=divides, line=line)


def _typed(key: str, value: Any, at: str) -> Any:
    """A value of the type the field holds (`true`, not `maybe`, for a bool)."""
    section, _, name = key.partition(".")
    return checked(value, typing.get_type_hints(SECTIONS[section])[name], at)


def _when(path: str, when: Any, at: str) -> dict[str, list]:
    if not isinstance(when, dict):
        raise ValueError(f"{at}: when: expects a mapping {{model.KEY: value or [values]}}; got {when!r}")
    for k in when:
        check_key(path, str(k), None)
    return {str(k): v if isinstance(v, list) else [v] for k, v in when.items()}


def _ordered(path: str, params: list[Param]) -> list[Param]:
    """Each key after the keys its conditions read (a cycle is an error)."""
    by_key = {p.key: p for p in params}
    if len(by_key) != len(params):
        dup = next(k for k, n in itertools.groupby(sorted(p.key for p in params)) if len(list(n)) > 1)
        raise ValueError(f"{path}: {dup} appears twice")
    order: list[Param] = []
    state: dict[str, int] = {}

    def visit(p: Param) -> None:
        if state.get(p.key) == 2:
            return
        if state.get(p.key) == 1:
            raise ValueError(f"{path}: {p.where}: its conditions depend on each other in a cycle")
        state[p.key] = 1
        reads = set(p.when) | ({p.divides} if p.divides else set()) | {k for o in p.options for k in o.when}
        for k in sorted(reads):
            if k in by_key:
                visit(by_key[k])
        state[p.key] = 2
        order.append(p)

    for p in params:
        visit(p)
    return order
