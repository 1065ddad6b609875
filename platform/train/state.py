"""Optimizer and schedule state in a checkpoint, without pickle.

torch.save would pickle the optimizer's state dict; a checkpoint is loaded on restart and
by `--resume`, so it holds tensors (safetensors) and plain JSON only. AdamW's state is the
same on every DDP rank, so rank 0's copy restores them all. The random stream needs no saved
state: every batch reseeds from (seed, window, epoch, batch, rank), so a run resumed at
any batch draws the masks and dropout it would have drawn.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file

TENSORS, META = "optimizer.safetensors", "train_state.json"


def save_train_state(directory: str, optimizer: torch.optim.Optimizer, schedule, partial: dict) -> None:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, os.path.join(directory, TENSORS))
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "schedule": schedule.state_dict(),
            "partial": partial}
    with open(os.path.join(directory, META), "w") as f:
        json.dump(meta, f)


def read_train_state(directory: str) -> dict | None:
    """The saved state (tensors and JSON), or None when the checkpoint ends a window."""
    if not os.path.exists(os.path.join(directory, META)):
        return None
    with open(os.path.join(directory, META)) as f:
        meta = json.load(f)
    return {**meta, "tensors": load_file(os.path.join(directory, TENSORS))}


def apply_train_state(state: dict, optimizer: torch.optim.Optimizer, schedule) -> None:
    per_param: dict[int, dict] = {}
    for name, value in {**state["tensors"], **state["scalars"]}.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in state["param_groups"]]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    schedule.load_state_dict(state["schedule"])


def position_text(partial: dict) -> str:
    """Where a checkpoint inside a window resumes, for messages and stopped.json."""
    return f"day {partial['window']}, epoch {partial['epochs_done'] + 1}, batch {partial.get('micro_done', 0) + 1}"
