"""Model files: model.json (config, catalogue size) + model.safetensors (weights).

safetensors holds tensors only, so loading a model directory runs no code from it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch
from safetensors.torch import load_file, save_file

from rayrec.files import read_versioned_json
from rayrec.models.config import ModelConfig
from rayrec.models.session_model import SessionModel

FORMAT_VERSION = 1


def save_model(model: SessionModel, directory: str, extra: dict | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(directory, "model.safetensors"))
    meta = {"format_version": FORMAT_VERSION, "n_items": model.n_items, "first_item": model.first_item, "model": asdict(model.cfg), **(extra or {})}
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)


def read_model_meta(directory: str) -> dict:
    return read_versioned_json(os.path.join(directory, "model.json"), FORMAT_VERSION, "rayrec model directory")


def load_model(directory: str) -> SessionModel:
    meta = read_model_meta(directory)
    model = SessionModel(ModelConfig(**meta["model"]), int(meta["n_items"]), int(meta.get("first_item", 2)))
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    return model.eval()


def load_weights(model: torch.nn.Module, directory: str) -> None:
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
