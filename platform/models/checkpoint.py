"""Building a model from a schema, and model files: model.json (config, feature specs) +
model.safetensors (weights).

safetensors holds tensors only and model.json is plain data, so loading a model directory
runs no code from it (pretrained-embedding files are read when a model is first built,
never when it is loaded: their vectors are in the weights by then).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
from safetensors.torch import load_file, save_file

from rayrec.files import read_versioned_json
from rayrec.models.config import ModelConfig
from rayrec.models.features import FeatureSpec, load_pretrained, resolve_features
from rayrec.models.session_model import SessionModel
from rayrec.rundir import MODEL_META, MODEL_WEIGHTS
from rayrec.schema import Schema

FORMAT_VERSION = 2


def build_model(schema: Schema, cfg: ModelConfig) -> SessionModel:
    """A fresh model whose inputs follow the schema."""
    return new_model(cfg, resolve_features(schema, cfg))


def new_model(cfg: ModelConfig, features: list[FeatureSpec]) -> SessionModel:
    """A fresh model, with its pretrained embedding vectors when configured."""
    model = SessionModel(cfg, features)
    if cfg.pretrained_embeddings:
        load_pretrained(model.inputs, cfg.pretrained_embeddings)
    return model


def save_model(model: SessionModel, directory: str, extra: dict | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(_dedupe_tied(state), os.path.join(directory, MODEL_WEIGHTS))
    meta = {"format_version": FORMAT_VERSION, "n_items": model.n_items, "first_item": model.first_item,
            "model": asdict(model.cfg), "features": [asdict(f) for f in model.features],
            "frozen": [n for n, p in model.named_parameters() if not p.requires_grad], **(extra or {})}
    with open(os.path.join(directory, MODEL_META), "w") as f:
        json.dump(meta, f, indent=2)


def _dedupe_tied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tied weights appear under two names; safetensors refuses shared storage, so the
    copy is written once per name (cloned)."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def read_model_meta(directory: str) -> dict:
    return read_versioned_json(os.path.join(directory, MODEL_META), FORMAT_VERSION, "rayrec model directory")


def load_model(directory: str) -> SessionModel:
    meta = read_model_meta(directory)
    cfg = ModelConfig(**meta["model"])
    model = SessionModel(cfg, [FeatureSpec(**f) for f in meta["features"]])
    model.load_state_dict(load_file(os.path.join(directory, MODEL_WEIGHTS)))
    return model.eval()


def load_weights(model: torch.nn.Module, directory: str) -> None:
    model.load_state_dict(load_file(os.path.join(directory, MODEL_WEIGHTS)))
