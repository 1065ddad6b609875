"""A trained run as a function: raw events of one live session -> top-k raw item ids.

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

import numpy as np
import torch

from rayrec.etl.columns import Ragged
from rayrec.etl.workflow import Workflow
from rayrec.files import require_complete
from rayrec.models.batch import pad_ragged
from rayrec.models.checkpoint import load_model
from rayrec.schema import Schema
from rayrec.storage import is_uri, locate


class Recommender:
    def __init__(self, run_dir: str):
        if is_uri(run_dir):  # a run published on storage: a private local copy, removed with this object
            copy = locate(require_complete(run_dir, "run directory").uri).download(
                tempfile.mkdtemp(prefix="rayrec-run-"))
            weakref.finalize(self, shutil.rmtree, copy, True)
            run_dir = copy
        workflow_dir = os.path.join(run_dir, "workflow")
        if not os.path.isdir(workflow_dir):
            raise FileNotFoundError(f"{run_dir}: no workflow/ (was the run trained on rayrec etl output?)")
        self.workflow = Workflow.load(workflow_dir)
        item = Schema.load(run_dir).item_id_column()
        self.item_col, self.vocab = item.name, item.properties.get("vocab")
        if self.vocab is None:
            raise ValueError(f"{run_dir}: schema column {item.name!r} names no vocabulary; it was not "
                             "encoded by this workflow's Categorify")
        self.encoder = self.workflow.categorify_for(self.vocab)
        self.model = load_model(os.path.join(run_dir, "checkpoint"))
        if self.model.n_items != self.encoder.cardinality(self.vocab):
            raise ValueError(f"{run_dir}: the model has {self.model.n_items} item rows but the workflow "
                             f"encodes {self.encoder.cardinality(self.vocab)}; they come from different datasets")

    @property
    def catalogue_size(self) -> int:
        return self.model.n_items - self.model.first_item

    def encode(self, events: list[dict]) -> dict[str, torch.Tensor]:
        """The model's input batch (one row) for one session's raw events."""
        frame = self.workflow.transform_events(events)
        item = frame[self.item_col]
        if not isinstance(item, Ragged) or len(item) != 1:
            raise ValueError(f"events: expected the events of one session, got {len(item)} sessions")
        batch = {}
        for f in self.model.features:
            if f.name not in frame:
                raise ValueError(f"the workflow does not produce model feature {f.name!r}")
            col = frame[f.name]
            dtype = np.int64 if f.kind == "categorical" else np.float32
            if f.is_list:
                values = np.asarray(col.values, dtype=dtype)
                batch[f.name] = torch.from_numpy(pad_ragged(col.offsets - col.offsets[0], values, len(values)))
            else:
                batch[f.name] = torch.from_numpy(np.asarray(col, dtype=dtype)[:1])
        return batch

    def recommend(self, events: list[dict], k: int, exclude_seen: bool = False) -> tuple[list, list[float]]:
        """Top-k next items for a session given as raw events (unknown ids count as OOV)."""
        codes, scores = self.model.recommend(self.encode(events), k, exclude_seen=exclude_seen)
        keep = torch.isfinite(scores[0])
        return self.encoder.decode(codes[0][keep].numpy(), self.vocab), [round(float(s), 6) for s in scores[0][keep]]
