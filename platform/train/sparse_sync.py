"""Catalogue-sized gradients exchanged as the rows a step touched, not as dense tensors.

DDP all-reduces every gradient densely: with a 1M-item catalogue and 64-wide item
embeddings that is 256 MB per step and rank (plus the 4 MB output bias), whatever the
batch. Under sampled softmax a step touches only the batch's items and the sampled
negatives, a few thousand rows. Here the tables whose first dimension is the catalogue
are left out of DDP; after backward each rank gathers every rank's touched rows
(indices and values, padded to the largest count) and sums them into its own gradient in
the same order, so the result equals the dense all-reduce and stays bit-identical
across ranks.

With full softmax every row's gradient is non-zero, so `auto` keeps the dense path.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def catalogue_parameters(model: nn.Module, n_items: int) -> dict[str, nn.Parameter]:
    """Trainable parameters with one row per catalogue code (item table, untied output
    weights, output bias)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad and p.shape[0] == n_items}


def exclude_from_ddp(model: nn.Module, names: list[str]) -> None:
    """DDP skips these (no bucket, no all-reduce, no broadcast at wrap time)."""
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


def broadcast_from_rank0(params: list[nn.Parameter]) -> None:
    """What DDP's wrap would have done for the excluded tables: every rank starts from rank 0's."""
    for p in params:
        dist.broadcast(p.data, 0)


class SparseRowSync:
    """Averages the catalogue tables' gradients over ranks, row-sparse. Counts what it sends."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.bytes_sent, self.steps = 0, 0

    @torch.no_grad()
    def __call__(self) -> None:
        world = dist.get_world_size()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            g = p.grad.view(p.shape[0], -1)
            rows = torch.nonzero(g.ne(0).any(dim=1)).squeeze(1)
            count = torch.tensor([len(rows)], device=g.device)
            counts = [torch.zeros_like(count) for _ in range(world)]
            dist.all_gather(counts, count)
            width = int(max(c.item() for c in counts))
            idx = torch.zeros(width, dtype=torch.long, device=g.device)
            val = torch.zeros(width, g.shape[1], dtype=g.dtype, device=g.device)
            idx[:len(rows)], val[:len(rows)] = rows, g[rows]
            all_idx = [torch.empty_like(idx) for _ in range(world)]
            all_val = [torch.empty_like(val) for _ in range(world)]
            dist.all_gather(all_idx, idx)
            dist.all_gather(all_val, val)
            g.zero_()
            for c, i, v in zip(counts, all_idx, all_val):  # rank order: the same sums on every rank
                n = int(c.item())
                g.index_add_(0, i[:n], v[:n])
            g.div_(world)
            self.bytes_sent += width * (8 + g.shape[1] * g.element_size())
        self.steps += 1

    def bytes_per_step(self) -> float:
        return self.bytes_sent / max(1, self.steps)


def dense_bytes(params: list[nn.Parameter]) -> int:
    """What DDP would all-reduce for the same tables each step."""
    return sum(p.numel() * p.element_size() for p in params)
