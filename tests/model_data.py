"""Small in-memory schemas and batches for model tests (no files, no Ray)."""
import numpy as np
import torch

from rayrec.accelerated import accelerate
from rayrec.models.checkpoint import build_model
from rayrec.models.config import ModelConfig
from rayrec.schema import CATEGORICAL, CONTINUOUS, ITEM_ID, LIST, ColumnSchema, Schema

N_ITEMS = 60   # codes 0..59; 0 pads, 1 is OOV, real items 2..59
N_CATS = 12
MAX_LEN = 12


def schema() -> Schema:
    return Schema([
        ColumnSchema("item", "int64", True, [ITEM_ID, CATEGORICAL, LIST], domain_min=0, domain_max=N_ITEMS - 1,
                     properties={"first_code": 2, "vocab": "item"}),
        ColumnSchema("category", "int64", True, [CATEGORICAL, LIST], domain_min=0, domain_max=N_CATS - 1),
        ColumnSchema("price", "float32", True, [CONTINUOUS, LIST]),
        ColumnSchema("prev_item", "int64", True, [CATEGORICAL, LIST], domain_min=0, domain_max=N_ITEMS - 1,
                     properties={"vocab": "item"}),
        ColumnSchema("segment", "int64", False, [CATEGORICAL], domain_min=0, domain_max=4),
        ColumnSchema("spend", "float32", False, [CONTINUOUS]),
        ColumnSchema("converted", "float32", False, []),
    ])


def sessions(n=64, seed=0, random_items=False, min_len=3, max_len=MAX_LEN):
    """Sessions that follow item -> item + 1 (learnable), or uniformly random items.
    Side features are functions of the item (category, price, previous item), so any
    leak of a target's features would let a model copy the target."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n)
    if random_items:
        items = rng.integers(2, N_ITEMS, size=(n, max_len))
    else:
        start = rng.integers(2, N_ITEMS - max_len, size=n)
        items = start[:, None] + np.arange(max_len)[None, :]
    real = np.arange(max_len)[None, :] < lengths[:, None]
    items = np.where(real, items, 0)
    prev = np.where(real, np.pad(items[:, :-1], ((0, 0), (1, 0)), constant_values=1), 0)
    return {
        "item": items.astype(np.int64),
        "category": np.where(real, items % (N_CATS - 2) + 2, 0).astype(np.int64),
        "price": np.where(real, items / N_ITEMS, 0).astype(np.float32),
        "prev_item": prev.astype(np.int64),
        "segment": rng.integers(1, 5, size=n).astype(np.int64),
        "spend": rng.random(n).astype(np.float32),
        "converted": (lengths > (min_len + max_len) / 2).astype(np.float32),
    }


def tensors(batch):
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def model(**cfg):
    torch.manual_seed(0)
    cfg = {"d_model": 32, "n_head": 2, "n_layer": 2, "max_len": MAX_LEN, "dropout": 0.0, **cfg}
    return accelerate(build_model(schema(), ModelConfig(**cfg)))   # as a run builds it


def train(m, steps=40, lr=5e-3, seed=0, random_items=False, n=64):
    """Steps on fresh batches each time; returns (first loss, mean of the last 5)."""
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr)
    m.train()
    losses = []
    for step in range(steps):
        loss = m(tensors(sessions(n, seed=seed * 1000 + step, random_items=random_items)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(m.loss_parts["next_item"])
    return losses[0], float(np.mean(losses[-5:]))
