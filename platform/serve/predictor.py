"""A trained run as a function: raw events of live sessions -> top-k raw item ids.

Three parts: encode (raw events -> the model's inputs, one session or many), score (a
Scorer: top-k codes for a batch) and decode (codes -> raw ids, O(k) per answer).

Loads only data from the run directory (workflow JSON + parquet, schema, model JSON +
safetensors): no pickle, no code from the directory. The fitted workflow turns the raw
events into the model's inputs online (numpy/pyarrow, no Dask); its item vocabulary turns
the scores back into raw ids. Used by the Ray Serve app and usable in-process.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from rayrec.accelerated import load_model
from rayrec.etl.workflow import Workflow
from rayrec.files import require_complete
from rayrec.rundir import RunDir
from rayrec.schema import Schema
from rayrec.serve.encoding import ModelInput, encode_session, pad_rows
from rayrec.serve.scoring import Scorer, TorchScorer
from rayrec.storage import is_uri, locate

MAX_RULE_IDS = 100_000   # ids in one include/exclude list


class Recommender:
    def __init__(self, run_dir: str):
        if is_uri(run_dir):  # a run published on storage: a private local copy, removed with this object
            copy = locate(require_complete(run_dir, "run directory").uri).download(
                tempfile.mkdtemp(prefix="rayrec-run-"))
            weakref.finalize(self, shutil.rmtree, copy, True)
            run_dir = copy
        run = RunDir(run_dir)
        if not os.path.isdir(run.workflow):
            raise FileNotFoundError(f"{run_dir}: no workflow/ (was the run trained on rayrec etl output?)")
        self.workflow = Workflow.load(run.workflow)
        item = Schema.load(run_dir).item_id_column()
        self.item_col, self.vocab = item.name, item.properties.get("vocab")
        if self.vocab is None:
            raise ValueError(f"{run_dir}: schema column {item.name!r} names no vocabulary; it was not "
                             "encoded by this workflow's Categorify")
        self.encoder = self.workflow.categorify_for(self.vocab)
        self.model = load_model(run.checkpoint)
        self.scorer: Scorer = TorchScorer(self.model)
        self.features = feature_specs(self.model)
        self.version = run.version()
        if self.model.n_items != self.encoder.cardinality(self.vocab):
            raise ValueError(f"{run_dir}: the model has {self.model.n_items} item rows but the workflow "
                             f"encodes {self.encoder.cardinality(self.vocab)}; they come from different datasets")

    def to(self, device: str) -> "Recommender":
        """Score on `device` (cuda on a GPU replica); batches and answers cross over here."""
        self.model.to(device)
        self.scorer = TorchScorer(self.model, device=device)
        return self

    @property
    def catalogue_size(self) -> int:
        return self.model.n_items - self.model.first_item

    # --- encode: raw events -> the model's inputs ----------------------------------------
    def encode_session(self, events: list[dict]) -> dict[str, np.ndarray]:
        """One session's raw events -> its feature arrays, unpadded (the workflow online)."""
        return encode_session(self.workflow, self.features, self.item_col, events)

    def collate(self, rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        """Sessions' feature arrays -> one right-padded batch."""
        return {name: torch.from_numpy(a) for name, a in pad_rows(self.features, rows).items()}

    def encode(self, events: list[dict]) -> dict[str, torch.Tensor]:
        """The model's input batch (one row) for one session's raw events."""
        return self.collate([self.encode_session(events)])

    def item_codes(self, ids: list, field: str) -> torch.Tensor:
        """Raw item ids of a business rule -> codes; ids the model never saw drop out
        (they cannot be recommended anyway)."""
        if not isinstance(ids, list):
            raise ValueError(f"{field}: expected a list of item ids")
        if not ids:
            return torch.zeros(0, dtype=torch.int64)
        if len(ids) > MAX_RULE_IDS:
            raise ValueError(f"{field}: {len(ids)} item ids; at most {MAX_RULE_IDS}")
        try:
            values = pa.array(ids)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            raise ValueError(f"{field}: expected a list of item ids of one type, got {ids[:5]!r}") from None
        codes = torch.from_numpy(np.asarray(self.encoder.encode(values, self.vocab, field), dtype=np.int64))
        return codes[codes >= self.model.first_item]

    # --- score and decode ----------------------------------------------------------------
    def recommend_many(self, queries: list[Query]) -> list[tuple[list, list[float]]]:
        """Top-k raw ids and scores for many sessions, scored as one batch."""
        rows = [self.encode_session(q.events) for q in queries]
        batch = self.collate(rows)
        banned = self.banned(queries, batch)
        allowed = [self.item_codes(q.include, "include") if q.include is not None else None for q in queries]
        codes, scores = self.scorer.topk(batch, max(q.k for q in queries), banned,
                                         allowed if any(a is not None for a in allowed) else None)
        return [self.decode(codes[i, :q.k], scores[i, :q.k]) for i, q in enumerate(queries)]

    def banned(self, queries: list[Query], batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """[N, L] codes each row may not return: its own items (exclude_seen) and its
        `exclude` list; 0 pads."""
        parts = []
        for i, q in enumerate(queries):
            row = [batch[self.item_col][i]] if q.exclude_seen else []
            if q.exclude:
                row.append(self.item_codes(q.exclude, "exclude"))
            parts.append(torch.cat(row) if row else torch.zeros(0, dtype=torch.int64))
        width = max(len(p) for p in parts)
        if width == 0:
            return None
        return torch.stack([torch.nn.functional.pad(p, (0, width - len(p))) for p in parts])

    def decode(self, codes: torch.Tensor, scores: torch.Tensor) -> tuple[list, list[float]]:
        """Codes -> raw ids, O(k): padding of a short answer (score -inf) is dropped."""
        keep = torch.isfinite(scores)
        return (self.encoder.decode(codes[keep].numpy(), self.vocab),
                [round(float(s), 6) for s in scores[keep]])

    def recommend(self, events: list[dict], k: int, exclude_seen: bool = False, include: list | None = None,
                  exclude: list | None = None) -> tuple[list, list[float]]:
        """Top-k next items for a session given as raw events (unknown ids count as OOV)."""
        return self.recommend_many([Query(events, k, exclude_seen, include, exclude)])[0]


def feature_specs(model) -> list[ModelInput]:
    return [ModelInput(f.name, bool(f.is_list), f.kind == "categorical") for f in model.features]


@dataclass
class Query:
    """One session to answer: its raw events, and the rules for its answer."""
    events: list[dict]
    k: int = 10
    exclude_seen: bool = False     # never recommend an item already in the session
    include: list | None = None    # only these raw item ids may be recommended
    exclude: list | None = None    # these raw item ids are never recommended


def check_replaces(old: Recommender, new: Recommender) -> None:
    """A new run may replace the served one only if clients can keep sending what they
    send: the same raw event fields, the same item column, ids of the same type."""
    if new.workflow.raw_columns() != old.workflow.raw_columns():
        raise ValueError(f"the new run reads event fields {new.workflow.raw_columns()}, the served one "
                         f"{old.workflow.raw_columns()}: clients would break")
    if new.item_col != old.item_col:
        raise ValueError(f"the new run's item column is {new.item_col!r}, the served one's {old.item_col!r}")
    new_type, old_type = new.encoder.value_type(new.vocab), old.encoder.value_type(old.vocab)
    if new_type != old_type:
        raise ValueError(f"the new run's item ids are {new_type}, the served one's {old_type}")
