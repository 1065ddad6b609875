"""One schema describes every column that flows between stages.

The model is built from it (the item-id column is found by its tag, its vocabulary size
by its domain), so nothing about features is hard-coded downstream. It is stored as
rayrec's JSON and as Merlin's ``schema.pbtxt`` text format, so that data prepared by
NVTabular can be trained on and data prepared by rayrec can be read by Merlin tools.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from rayrec.storage import display, locate

# Tags understood across rayrec (Merlin spells item_id as the pair item + id).
ITEM_ID, SESSION_ID, CATEGORICAL, CONTINUOUS, LIST, TIME = (
    "item_id", "session_id", "categorical", "continuous", "list", "time")


@dataclass
class ColumnSchema:
    name: str
    dtype: str                          # numpy-style name of the (element) type: int64, float32, string
    is_list: bool = False
    tags: list[str] = field(default_factory=list)
    value_count_min: int | None = None  # list lengths, for list columns
    value_count_max: int | None = None
    domain_min: int | None = None       # encoded ids: codes lie in [domain_min, domain_max]
    domain_max: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)  # e.g. vocab, first_code (JSON scalars)

    @property
    def cardinality(self) -> int | None:
        """Size of the embedding table this column needs (codes 0..domain_max)."""
        return None if self.domain_max is None else self.domain_max + 1


@dataclass
class Schema:
    columns: list[ColumnSchema]

    def __getitem__(self, name: str) -> ColumnSchema:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"column {name!r} is not in the schema (columns: {self.names})")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def with_tag(self, tag: str) -> list[ColumnSchema]:
        return [c for c in self.columns if tag in c.tags]

    def item_id_column(self) -> ColumnSchema:
        """The list column of item ids that next-item prediction predicts."""
        found = [c for c in self.with_tag(ITEM_ID) if c.is_list]
        if len(found) != 1:
            raise ValueError(f"the schema must tag exactly one list column {ITEM_ID!r}; "
                             f"found {[c.name for c in found]}")
        return found[0]

    # --- rayrec JSON -------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"columns": [asdict(c) for c in self.columns]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        return cls([ColumnSchema(**c) for c in json.loads(text)["columns"]])

    # --- Merlin schema.pbtxt -----------------------------------------------------------
    def to_pbtxt(self) -> str:
        return "".join(_feature_pbtxt(c) for c in self.columns)

    @classmethod
    def from_pbtxt(cls, text: str) -> "Schema":
        return cls([_feature_from_message(f) for f in parse_pbtxt(text).get("feature", [])])

    # --- files -------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        """Write schema.json and schema.pbtxt side by side (a directory path or URI)."""
        root = locate(directory)
        root.child("schema.json").write_bytes(self.to_json().encode())
        root.child("schema.pbtxt").write_bytes(self.to_pbtxt().encode())

    @classmethod
    def load(cls, path: str) -> "Schema":
        """Load a schema file, or the schema in a directory (JSON preferred over pbtxt);
        a path or a URI."""
        loc = locate(path)
        if loc.is_dir():
            for name in ("schema.json", "schema.pbtxt"):
                if loc.child(name).is_file():
                    return cls.load(loc.child(name).uri)
            raise FileNotFoundError(f"{display(path)}: no schema.json or schema.pbtxt in this directory")
        if not loc.is_file():
            raise FileNotFoundError(f"{display(path)}: no such schema file or directory")
        text = loc.read_bytes().decode()
        return cls.from_json(text) if display(path).endswith(".json") else cls.from_pbtxt(text)


# ---------------------------------------------------------------------------------------
# pbtxt writing
_FLOAT_DTYPES = ("float16", "float32", "float64")


def _feature_pbtxt(c: ColumnSchema) -> str:
    lines = ["feature {", f'  name: "{c.name}"']
    if c.is_list and (c.value_count_min is not None or c.value_count_max is not None):
        lines.append("  value_count {")
        if c.value_count_min is not None:
            lines.append(f"    min: {c.value_count_min}")
        if c.value_count_max is not None:
            lines.append(f"    max: {c.value_count_max}")
        lines.append("  }")
    kind = "FLOAT" if c.dtype in _FLOAT_DTYPES else "BYTES" if c.dtype == "string" else "INT"
    lines.append(f"  type: {kind}")
    if c.domain_max is not None:
        lines += ["  int_domain {", f'    name: "{c.name}"', f"    min: {c.domain_min or 0}",
                  f"    max: {c.domain_max}", f"    is_categorical: {str(CATEGORICAL in c.tags).lower()}",
                  "  }"]
    merlin_tags = []
    for t in c.tags:  # Merlin writes item_id as the two tags "item" and "id"
        merlin_tags += ["item", "id"] if t == ITEM_ID else [t]
    meta = {"is_list": c.is_list, "is_ragged": c.is_list, "dtype": c.dtype, **c.properties}
    lines.append("  annotation {")
    lines += [f'    tag: "{t}"' for t in dict.fromkeys(merlin_tags)]
    lines.append("    extra_metadata {")
    lines.append("      [type.googleapis.com/google.protobuf.Struct] {")
    for key, value in meta.items():
        if isinstance(value, bool):
            kind, rendered = "bool_value", str(value).lower()
        elif isinstance(value, (int, float)):
            kind, rendered = "number_value", repr(float(value))
        else:
            kind, rendered = "string_value", json.dumps(str(value))
        lines.append(f'        fields {{ key: "{key}" value {{ {kind}: {rendered} }} }}')
    lines += ["      }", "    }", "  }", "}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# pbtxt reading: a small parser for protobuf's text format (no Merlin, no protobuf
# descriptors needed). Every field maps to a list because any field may repeat.
_TOKEN = re.compile(r'\s*(?:#[^\n]*\n\s*)*(\[[^\]]*\]|"(?:[^"\\]|\\.)*"|[{}:;,]|[^\s{}:;,"\[]+)')


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    tokens = [m.group(1) for m in _TOKEN.finditer(text)]
    pos = 0

    def message(closing: str | None) -> dict[str, list[Any]]:
        nonlocal pos
        out: dict[str, list[Any]] = {}
        while pos < len(tokens):
            tok = tokens[pos]
            if tok == closing:
                pos += 1
                return out
            if tok in (";", ","):
                pos += 1
                continue
            name = tok
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise ValueError(f"pbtxt: field {name!r} has no value")
            if tokens[pos] in ("{", "<"):
                pos += 1
                value: Any = message("}" if tokens[pos - 1] == "{" else ">")
            else:
                value = _scalar(tokens[pos])
                pos += 1
            out.setdefault(name, []).append(value)
        if closing is not None:
            raise ValueError("pbtxt: unbalanced braces")
        return out

    return message(None)


def _scalar(tok: str) -> Any:
    if tok.startswith('"'):
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
    if tok in ("true", "false"):
        return tok == "true"
    try:
        return int(tok)
    except ValueError:
        try:
            return float(tok)
        except ValueError:
            return tok  # enum name such as INT or NULL_VALUE


def _one(msg: dict[str, list[Any]], key: str, default: Any = None) -> Any:
    values = msg.get(key)
    return values[0] if values else default


def _struct_fields(annotation: dict[str, list[Any]]) -> dict[str, Any]:
    """Flatten annotation.extra_metadata's google.protobuf.Struct into plain values."""
    out: dict[str, Any] = {}
    for meta in annotation.get("extra_metadata", []):
        for struct in meta.get("[type.googleapis.com/google.protobuf.Struct]", []):
            for f in struct.get("fields", []):
                value = _one(f, "value", {})
                for kind in ("bool_value", "string_value", "number_value"):
                    if kind in value:
                        out[_one(f, "key")] = _one(value, kind)
    return out


def _feature_from_message(f: dict[str, list[Any]]) -> ColumnSchema:
    name = _one(f, "name")
    annotation = _one(f, "annotation", {})
    tags = list(annotation.get("tag", []))
    if "item" in tags and "id" in tags:  # Merlin's spelling of item_id
        at = tags.index("item")
        tags = [t for t in tags if t not in ("item", "id", ITEM_ID)]
        tags.insert(min(at, len(tags)), ITEM_ID)
    meta = _struct_fields(annotation)
    properties = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
                  for k, v in meta.items() if k not in _STRUCTURAL}
    value_count = _one(f, "value_count")
    is_list = bool(meta.get("is_list", value_count is not None or LIST in tags))
    if is_list and LIST not in tags:
        tags.append(LIST)
    kind = _one(f, "type", "INT")
    dtype = meta.get("dtype") or {"FLOAT": "float32", "BYTES": "string"}.get(kind, "int64")
    domain = _one(f, "int_domain")
    return ColumnSchema(
        name=name, dtype=dtype, is_list=is_list, tags=tags,
        value_count_min=_one(value_count, "min") if value_count else None,
        value_count_max=_one(value_count, "max") if value_count else None,
        domain_min=_one(domain, "min", 0) if domain else None,
        domain_max=_one(domain, "max") if domain else None,
        properties=properties,
    )


# extra_metadata keys that map onto ColumnSchema fields rather than `properties`
_STRUCTURAL = ("is_list", "is_ragged", "dtype", "_dims")
