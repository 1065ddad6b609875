"""Next-item prediction over a session: item embeddings -> transformer body -> tied head.

Sequences are right-padded item codes (0 = padding). Training objectives:
- clm: every position predicts the next item, attending only to the past.
- mlm: a random subset of positions (at least one per session) is replaced by a learned
  mask vector and predicted with bidirectional attention.
Inference (`next_item_scores`) scores the item that follows the given sequence: for mlm
a mask slot is appended after the last item. The item to predict is never an input:
callers pass only the items before it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig

PAD = 0
FIRST_ITEM = 2  # default first real item code: 0 pads, 1 is the unknown-item bucket


class SessionModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int, first_item: int = FIRST_ITEM):
        """Codes below `first_item` (padding, unknown, null: the schema's `first_code`)
        are never predicted nor trained on as targets."""
        super().__init__()
        self.cfg, self.n_items, self.first_item = cfg, n_items, first_item
        self.item_embedding = nn.Embedding(n_items, cfg.d_model, padding_idx=PAD)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()
        self.mask_embedding = nn.Parameter(torch.randn(cfg.d_model) * 0.02) if cfg.masking == "mlm" else None
        self.input_norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.body = build_body(cfg)
        self.output_bias = nn.Parameter(torch.zeros(n_items))

    # --- shared pieces -----------------------------------------------------------------
    def encode(self, items: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L, d] for item codes [B, L]; `masked` positions see the mask vector."""
        x = self.item_embedding(items)
        attend = items != PAD
        if masked is not None:
            x = torch.where(masked[..., None], self.mask_embedding.to(x.dtype), x)
            attend = attend | masked
        return self.body(self.dropout(self.input_norm(x)), attend)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the whole catalogue, the output layer tied to the item embeddings."""
        out = F.linear(hidden, self.item_embedding.weight, self.output_bias)
        return out.index_fill(-1, torch.arange(self.first_item, device=out.device), float("-inf"))

    # --- training ----------------------------------------------------------------------
    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Training loss for a batch of sessions [B, L] (forward, so that DDP syncs grads)."""
        if self.cfg.masking == "clm":
            hidden = self.encode(items)[:, :-1]
            targets = items[:, 1:]
        else:
            masked = mask_mlm(items, self.cfg.mlm_probability)
            hidden = self.encode(items.masked_fill(masked, PAD), masked)
            targets = items.masked_fill(~masked, PAD)
        keep = targets >= self.first_item
        return F.cross_entropy(self.logits(hidden[keep]), targets[keep])

    # --- inference ---------------------------------------------------------------------
    @torch.no_grad()
    def next_item_scores(self, items: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] for the item after each right-padded sequence [B, L<=max_len]."""
        items = left_align_room(items, self.cfg.max_len, need_slot=self.cfg.masking == "mlm")
        lengths = (items != PAD).sum(1)
        rows = torch.arange(len(items), device=items.device)
        if self.cfg.masking == "mlm":
            masked = torch.zeros_like(items, dtype=torch.bool)
            masked[rows, lengths] = True
            hidden = self.encode(items, masked)[rows, lengths]
        else:
            hidden = self.encode(items)[rows, (lengths - 1).clamp(min=0)]
        return self.logits(hidden)


def mask_mlm(items: torch.Tensor, probability: float) -> torch.Tensor:
    """Random positions to predict: each real item with `probability`, and at least one per
    session (its last item when the draw picked none)."""
    real = items != PAD
    masked = (torch.rand(items.shape, device=items.device) < probability) & real
    none = ~masked.any(1) & real.any(1)
    last = (real.sum(1) - 1).clamp(min=0)
    masked[none, last[none]] = True
    return masked


def left_align_room(items: torch.Tensor, max_len: int, need_slot: bool) -> torch.Tensor:
    """Fit sequences into max_len positions (dropping the oldest items), keeping one free
    slot after the last item when the model needs one to place the mask."""
    limit = max_len - 1 if need_slot else max_len
    lengths = (items != PAD).sum(1)
    over = (lengths - limit).clamp(min=0)
    if items.shape[1] < max_len:
        items = F.pad(items, (0, max_len - items.shape[1]), value=PAD)
    if bool((over > 0).any()):
        idx = torch.arange(items.shape[1], device=items.device)[None, :] + over[:, None]
        valid = idx < items.shape[1]
        items = torch.where(valid, items.gather(1, idx.clamp(max=items.shape[1] - 1)), PAD)
    return items[:, :max_len]
