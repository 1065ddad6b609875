"""Per-position input vectors built from the schema: embeddings for categorical columns,
scalars / an MLP / soft one-hot embeddings for continuous ones, session-level columns
broadcast along the sequence, aggregated into one d_model vector per position.

`resolve_features` turns schema + config into plain FeatureSpec records once (they are
saved with the model, so loading a model needs no schema); `FeatureEmbedding` is the
nn.Module that consumes a batch dict {column: tensor}.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from rayrec.models.config import ModelConfig
from rayrec.schema import CATEGORICAL, CONTINUOUS, ITEM_ID, Schema

PAD = 0


@dataclass
class FeatureSpec:
    name: str
    kind: str                 # categorical | continuous
    is_list: bool             # False: a session-level column, broadcast along the sequence
    cardinality: int = 0      # categorical: rows of its table (codes 0..cardinality-1)
    table: str = ""           # categorical: the column whose embedding table it uses
    dim: int = 0              # categorical: embedding width
    first_code: int = 1       # categorical: codes below it are padding / unknown / null


def resolve_features(schema: Schema, cfg: ModelConfig) -> list[FeatureSpec]:
    """The item column first, then `cfg.features` in order, typed and sized by the schema."""
    item = schema.item_id_column()
    names = [item.name] + [n for n in cfg.features if n != item.name]
    specs = []
    for name in names:
        try:
            col = schema[name]
        except KeyError as e:
            raise ValueError(f"model.features: {e.args[0]}") from None
        categorical = name == item.name or CATEGORICAL in col.tags or ITEM_ID in col.tags
        if categorical and col.cardinality is None:
            raise ValueError(f"model.features: categorical column {name!r} has no domain in the schema")
        if not categorical and CONTINUOUS not in col.tags and not col.dtype.startswith(("float", "int")):
            raise ValueError(f"model.features: column {name!r} ({col.dtype}) is neither categorical nor numeric")
        spec = FeatureSpec(name=name, kind="categorical" if categorical else "continuous", is_list=col.is_list)
        if categorical:
            spec.cardinality = col.cardinality
            spec.first_code = int(col.properties.get("first_code", 1))
            spec.table = cfg.shared_embeddings.get(name) or _same_vocab(schema, specs, col) or name
        specs.append(spec)
    tables = {s.name: s for s in specs if s.kind == "categorical"}
    for s in specs:
        if s.kind != "categorical":
            continue
        if s.table not in tables:
            raise ValueError(f"model.shared_embeddings: {s.name!r} shares {s.table!r}, which is not a feature")
        owner = tables[s.table]
        owner.cardinality = max(owner.cardinality, s.cardinality)
    for s in specs:
        if s.kind == "categorical":
            s.cardinality = tables[s.table].cardinality
            s.dim = embedding_dim(cfg, s.table, s.cardinality)
    if cfg.aggregation != "concat" and cfg.continuous == "scalar" and any(s.kind == "continuous" for s in specs):
        raise ValueError(f"model.aggregation {cfg.aggregation} adds vectors: continuous features need "
                         "model.continuous projection or soft_onehot")
    return specs


def _same_vocab(schema: Schema, earlier: list[FeatureSpec], col) -> str | None:
    """Columns encoded with one shared vocabulary (ETL `vocab`) hold the same ids: one table."""
    vocab = col.properties.get("vocab")
    for s in earlier:
        if s.kind == "categorical" and vocab and schema[s.name].properties.get("vocab") == vocab:
            return s.table
    return None


def embedding_dim(cfg: ModelConfig, table: str, cardinality: int) -> int:
    if table in cfg.embedding_dims:
        return int(cfg.embedding_dims[table])
    if cfg.aggregation != "concat":  # vectors are added: one width
        return cfg.embedding_dim or cfg.d_model
    if cfg.infer_embedding_dims:
        return int(8 * math.ceil(cfg.embedding_dim_multiplier * cardinality ** 0.25 / 8))
    return cfg.embedding_dim or cfg.d_model


class SoftOneHot(nn.Module):
    """A continuous value as a learned mixture of bucket embeddings (soft one-hot encoding)."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.logits = nn.Linear(1, buckets)
        self.table = nn.Parameter(torch.randn(buckets, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x[..., None]), -1) @ self.table


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU between (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class FeatureEmbedding(nn.Module):
    def __init__(self, specs: list[FeatureSpec], cfg: ModelConfig):
        super().__init__()
        self.specs, self.cfg = specs, cfg
        self.item = specs[0]
        self.categorical = [s for s in specs if s.kind == "categorical"]
        self.continuous = [s for s in specs if s.kind == "continuous"]
        self.tables = nn.ModuleDict()
        for s in self.categorical:
            if s.table == s.name:
                self.tables[s.name] = nn.Embedding(s.cardinality, s.dim, padding_idx=PAD)
                init_table(self.tables[s.name].weight, cfg)
        sum_dim = cfg.embedding_dim or cfg.d_model
        self.soft_onehot = nn.ModuleDict()
        self.projection = None
        cont_width = 0
        if self.continuous and cfg.continuous == "soft_onehot":
            dim = sum_dim if cfg.aggregation != "concat" else (cfg.soft_onehot_dim or cfg.embedding_dim or cfg.d_model)
            for s in self.continuous:
                self.soft_onehot[s.name] = SoftOneHot(cfg.soft_onehot_buckets, dim)
            cont_width = dim * len(self.continuous)
        elif self.continuous and cfg.continuous == "projection":
            sizes = list(cfg.continuous_projection)
            if cfg.aggregation != "concat":
                sizes[-1] = sum_dim
            self.projection = mlp([len(self.continuous)] + sizes, cfg.dropout)
            cont_width = sizes[-1]
        elif self.continuous:
            cont_width = len(self.continuous)
        if cfg.aggregation == "concat":
            width = sum(s.dim for s in self.categorical) + cont_width
        else:
            width = sum_dim
        if cfg.input_mlp:  # an MLP block between the aggregated features and the body
            self.out = nn.Sequential(mlp([width, *cfg.input_mlp], cfg.dropout), nn.ReLU(),
                                     nn.Linear(cfg.input_mlp[-1], cfg.d_model))
        else:
            self.out = nn.Linear(width, cfg.d_model) if width != cfg.d_model else nn.Identity()
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout if cfg.input_dropout is None else cfg.input_dropout)

    def table(self, spec: FeatureSpec) -> nn.Embedding:
        return self.tables[spec.table]

    @property
    def item_table(self) -> nn.Embedding:
        return self.table(self.item)

    def forward(self, batch: dict[str, torch.Tensor], length: int) -> torch.Tensor:
        """[B, length, d_model] from the batch's columns (list columns [B, >=length], context [B])."""
        real = batch[self.item.name][:, :length] != PAD
        noise = self.cfg.swap_noise if self.training else 0.0
        parts, item_vec = [], None
        for s in self.categorical:
            ids = self._positions(batch[s.name], length, s)
            if noise:
                ids = swap_noise(ids, real, noise)
            vec = self.table(s)(ids)
            parts.append(vec)
            if s is self.item:
                item_vec = vec
        if self.continuous:
            values = [self._positions(batch[s.name], length, s).float() for s in self.continuous]
            if noise:
                values = [swap_noise(v, real, noise) for v in values]
            if self.soft_onehot:
                parts += [self.soft_onehot[s.name](v) for s, v in zip(self.continuous, values)]
            elif self.projection is not None:
                parts.append(self.projection(torch.stack(values, -1)))
            else:
                parts.append(torch.stack(values, -1))
        if self.cfg.aggregation == "concat":
            x = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        elif self.cfg.aggregation == "elementwise-sum":
            x = torch.stack(parts, 0).sum(0)
        else:  # elementwise-sum-item-multi: the item vector scaled by the sum of the others
            others = [p for p in parts if p is not item_vec]
            x = item_vec * torch.stack(others, 0).sum(0) if others else item_vec
        return self.drop(self.norm(self.out(x)))

    @staticmethod
    def _positions(t: torch.Tensor, length: int, spec: FeatureSpec) -> torch.Tensor:
        if spec.is_list:
            return t[:, :length]
        return t[:, None].expand(t.shape[0], length)


def swap_noise(values: torch.Tensor, real: torch.Tensor, p: float) -> torch.Tensor:
    """Replace each real position's value, with probability p, by the value at a random real
    position of the batch (keeps the batch's value distribution; padding stays padding)."""
    flat = values[real]
    if flat.numel() == 0:
        return values
    swap = (torch.rand(values.shape, device=values.device) < p) & real
    donors = flat[torch.randint(0, flat.numel(), values.shape, device=values.device)]
    return torch.where(swap, donors, values)


def init_table(weight: torch.Tensor, cfg: ModelConfig) -> None:
    with torch.no_grad():
        if cfg.embedding_init == "normal":
            nn.init.normal_(weight, std=cfg.embedding_init_std)
        elif cfg.embedding_init == "truncated_normal":
            nn.init.trunc_normal_(weight, std=cfg.embedding_init_std, a=-2 * cfg.embedding_init_std,
                                  b=2 * cfg.embedding_init_std)
        elif cfg.embedding_init == "uniform":
            nn.init.uniform_(weight, -cfg.embedding_init_std, cfg.embedding_init_std)
        else:
            nn.init.xavier_uniform_(weight)
        weight[PAD].zero_()


def load_pretrained(features: FeatureEmbedding, pretrained: dict[str, dict]) -> None:
    """Copy vectors from .npy ([cardinality, dim], row = code) or .parquet (columns `id` and
    `embedding`, a list of floats; rows for absent ids stay zero) into a column's table,
    frozen unless `trainable`. Only numbers are read: no pickle (allow_pickle=False)."""
    specs = {s.name: s for s in features.categorical}
    for col, entry in pretrained.items():
        if col not in specs:
            raise ValueError(f"model.pretrained_embeddings: {col!r} is not a categorical feature of the model")
        path, table = entry["path"], features.table(specs[col])
        rows, dim = table.weight.shape
        if path.endswith(".npy"):
            vectors = np.load(path, allow_pickle=False)
            if vectors.ndim != 2 or vectors.shape != (rows, dim):
                raise ValueError(f"{path}: expected an array of shape ({rows}, {dim}) for column {col!r}, "
                                 f"got {vectors.shape}")
        elif path.endswith(".parquet"):
            vectors = _parquet_vectors(path, rows, dim, col)
        else:
            raise ValueError(f"{path}: pretrained embeddings must be .npy or .parquet")
        if not np.isfinite(vectors).all():
            raise ValueError(f"{path}: contains NaN or infinite values")
        with torch.no_grad():
            table.weight.copy_(torch.from_numpy(np.asarray(vectors, dtype=np.float32)))
        table.weight.requires_grad_(bool(entry.get("trainable", False)))


def _parquet_vectors(path: str, rows: int, dim: int, col: str) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: pretrained embeddings for {col!r} not found")
    table = pq.read_table(path)
    for need in ("id", "embedding"):
        if need not in table.column_names:
            raise ValueError(f"{path}: missing column {need!r} (expected id and embedding)")
    ids = table.column("id").to_numpy().astype(np.int64)
    emb = table.column("embedding").combine_chunks()
    lengths = np.diff(emb.offsets.to_numpy())
    bad = np.flatnonzero((lengths != dim) | (ids < 0) | (ids >= rows))
    if len(bad):
        r = int(bad[0])
        raise ValueError(f"{path}: row {r}: id {ids[r]} with {lengths[r]} values; expected an id in "
                         f"[0, {rows}) and {dim} values")
    out = np.zeros((rows, dim), dtype=np.float32)
    out[ids] = emb.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return out
