"""Workflows from YAML (`workflow:` with `input:`, `ops:` and `plugins:`) and the default one.

`plugins` names installed modules to import first, so that custom ops and functions they
register are known; this is the only place rayrec imports user code, and it happens
because the user's own config asked for it, never because a saved workflow did.
"""
from __future__ import annotations

import importlib

from rayrec.config_io import from_dict
from rayrec.etl.config import EtlConfig
from rayrec.etl.inputs import InputSpec
from rayrec.etl.op import op_from_dict
from rayrec.etl.ops_encode import Categorify
from rayrec.etl.ops_session import DropConsecutiveRepeats, Filter, Groupby, ListSlice, Select
from rayrec.etl.ops_time import DayIndex
from rayrec.etl.workflow import Workflow
from rayrec.schema import ITEM_ID


def workflow_from_config(section: dict, where: str) -> Workflow:
    unknown = sorted(set(section) - {"input", "ops", "plugins"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected input, ops, plugins")
    for module in section.get("plugins") or []:
        importlib.import_module(module)
    ops = []
    for i, spec in enumerate(section.get("ops") or []):
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: ops[{i}] must be a mapping with an `op:` name")
        try:
            ops.append(op_from_dict(spec))
        except ValueError as e:
            raise ValueError(f"{where}: ops[{i}]: {e}") from None
    if not ops:
        raise ValueError(f"{where}: no ops")
    return Workflow(ops, from_dict(InputSpec, section.get("input"), f"{where}: input"))


def default_workflow(cfg: EtlConfig) -> Workflow:
    """Item-id sessions: drop refreshes, encode items, group by session in time order, keep
    the last max_len items, index days, drop sessions shorter than min_session_length.
    (Refreshes go first so that every statistic is fitted in a single pass.)"""
    s, item, t = cfg.session_col, cfg.item_col, cfg.time_col
    if len({s, item, t}) != 3:
        raise ValueError(f"session, item and time columns must differ, got {[s, item, t]}")
    items = f"{item}-list"
    return Workflow([
        DropConsecutiveRepeats(by=s, column=item),
        Categorify([item], tags=[ITEM_ID]),
        Groupby(by=s, sort=t, aggs={item: ["list", "count"], t: ["first"]}),
        ListSlice([items], start=-cfg.max_len),
        DayIndex(column=f"{t}-first", out=cfg.day_column),
        Filter(column=f"{item}-count", cmp=">=", value=cfg.min_session_length),
        Select([s, items, f"{item}-count", f"{t}-first", cfg.day_column]),
    ], InputSpec(session=s, time=t))
