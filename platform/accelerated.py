"""Models as a run computes with them: built or loaded by models/, then handed to accel
(the opt-in fast paths) when their config asks for it. The one place accel is applied.

With `model.accel: off` nothing of rayrec.accel is imported: the model is HF's and torch's
modules as they are. The report of what runs is kept on the model (`accel_report`) for
the trainer's metrics.json and the endpoint's /readyz.
"""
from __future__ import annotations

from rayrec.models.checkpoint import load_model as load_plain, new_model as new_plain
from rayrec.models.features import FeatureSpec
from rayrec.models.config import ModelConfig
from rayrec.models.session_model import SessionModel


def accelerate(model: SessionModel) -> SessionModel:
    """`model` with its registered modules swapped per model.cfg.accel; report kept on it."""
    if model.cfg.accel == "off":
        model.accel_report = {"path": "plain", "replaced": [], "kernels": "off", "attention": "hf",
                              "unpad": False, "why": "model.accel: off"}
        return model
    from rayrec.accel import apply

    model.accel_report = apply(model, model.cfg).to_dict()
    return model


def new_model(cfg: ModelConfig, features: list[FeatureSpec]) -> SessionModel:
    return accelerate(new_plain(cfg, features))


def load_model(directory: str) -> SessionModel:
    return accelerate(load_plain(directory))
