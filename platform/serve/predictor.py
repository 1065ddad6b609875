"""A trained run as a function: raw events of one live session -> top-k raw item ids.

Loads only data from the run directory (workflow JSON + parquet, model JSON +
safetensors): no pickle, no code from the directory. Used by the Ray Serve app and
usable in-process.
"""
from __future__ import annotations

import os

import torch

from rayrec.etl.workflow import SessionWorkflow
from rayrec.models.checkpoint import load_model


class Recommender:
    def __init__(self, run_dir: str):
        workflow_dir = os.path.join(run_dir, "workflow")
        if not os.path.isdir(workflow_dir):
            raise FileNotFoundError(f"{run_dir}: no workflow/ (was the run trained on rayrec etl output?)")
        self.workflow = SessionWorkflow.load(workflow_dir)
        self.model = load_model(os.path.join(run_dir, "checkpoint"))
        if self.model.n_items != self.workflow.cardinality:
            raise ValueError(f"{run_dir}: the model has {self.model.n_items} item rows but the workflow "
                             f"encodes {self.workflow.cardinality}; they come from different datasets")
        self.item_col = self.workflow.config.item_col
        self.time_col = self.workflow.config.time_col

    @property
    def catalogue_size(self) -> int:
        return len(self.workflow.vocab)

    def recommend(self, events: list[dict], k: int) -> tuple[list, list[float]]:
        """Top-k next items for a session given as raw events (unknown ids count as OOV)."""
        codes = self.workflow.transform_session(events)
        k = min(k, self.catalogue_size)
        scores = self.model.next_item_scores(torch.from_numpy(codes)[None, :])[0]
        top = torch.topk(scores, k)
        return self.workflow.decode(top.indices.numpy()), [round(float(s), 6) for s in top.values]
