"""The peer for the bodies Transformers4Rec has no config for (Llama, GRU): the training
loop an engineer writes by hand with plain HF transformers / plain torch, run on the same
parquet files as rayrec, in its own process.

The loop is a fair one, not a strawman: item embeddings tied to the output layer, the
hidden states of the real positions gathered before the output matmul (no logits for
padding), fused AdamW, next-item cross-entropy at every position, the same sizes,
dropout 0.1 and weight decay 0.01 as rayrec's defaults. Timed like rayrec's
`train_seconds`: the epoch's loop, first steps included, after the data is in memory.

    python benchmarks/plain_loops.py --arch llama --train D/1/train.parquet \
        --valid D/2/valid.parquet --item-col product_id-list --items 17116 --d-model 64
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn


def padded(path: str, col: str, width: int) -> torch.Tensor:
    """[sessions, width] item codes, right-padded with 0, each session's last `width`."""
    lists = pq.read_table(path, columns=[col]).column(col).to_pylist()
    out = np.zeros((len(lists), width), dtype=np.int64)
    for i, items in enumerate(lists):
        items = items[-width:]
        out[i, :len(items)] = items
    return torch.from_numpy(out)


class PlainModel(nn.Module):
    def __init__(self, arch: str, n_items: int, d: int, n_layer: int, n_head: int, max_len: int, dropout: float):
        super().__init__()
        self.arch = arch
        self.items = nn.Embedding(n_items, d, padding_idx=0)
        nn.init.normal_(self.items.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)
        if arch == "gru":
            self.body = nn.GRU(d, d, n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0)
        else:
            from transformers import LlamaConfig, LlamaModel

            self.body = LlamaModel(LlamaConfig(vocab_size=1, hidden_size=d, num_hidden_layers=n_layer,
                                               num_attention_heads=n_head, num_key_value_heads=n_head,
                                               intermediate_size=4 * d, max_position_embeddings=max_len,
                                               attention_dropout=dropout))
        self.bias = nn.Parameter(torch.zeros(n_items))

    def hidden(self, items: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm(self.items(items)))
        if self.arch == "gru":
            return self.body(x)[0]
        return self.body(inputs_embeds=x, attention_mask=(items > 0).long()).last_hidden_state

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.items.weight, self.bias)


def train_epoch(model: PlainModel, items: torch.Tensor, batch: int, lr: float, seed: int) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    model.train()
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
    losses = []
    started = time.perf_counter()
    for start in range(0, len(items), batch):
        x = items[order[start:start + batch]]
        h = model.hidden(x[:, :-1])
        target = x[:, 1:]
        real = target > 0
        loss = F.cross_entropy(model.logits(h[real]), target[real])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - started, float(np.mean(losses[-max(1, len(losses) // 4):]))


@torch.no_grad()
def ndcg_at_20(model: PlainModel, items: torch.Tensor, batch: int = 512) -> float:
    """Next-item NDCG@20 of each session's last item from the ones before it, all items ranked."""
    model.eval()
    lengths = (items > 0).sum(1)
    keep = lengths >= 2
    items, lengths = items[keep], lengths[keep]
    total = 0.0
    for start in range(0, len(items), batch):
        x, n = items[start:start + batch], lengths[start:start + batch]
        rows = torch.arange(len(x))
        target = x[rows, n - 1]
        context = x.clone()
        context[rows, n - 1] = 0
        h = model.hidden(context)[rows, n - 2]
        scores = model.logits(h)
        rank = (scores > scores[rows, target][:, None]).sum(1) + 1
        total += float(torch.where(rank <= 20, 1.0 / torch.log2(rank.double() + 1), 0.0).sum())
    return total / max(1, len(items))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["llama", "gru"], required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--item-col", required=True)
    p.add_argument("--items", type=int, required=True, help="catalogue size (largest code + 1)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    train, valid = padded(a.train, a.item_col, a.max_len), padded(a.valid, a.item_col, a.max_len)
    model = PlainModel(a.arch, a.items, a.d_model, a.n_layer, a.n_head, a.max_len, 0.1)
    seconds, loss = train_epoch(model, train, a.batch, a.lr, seed=0)
    ndcg = ndcg_at_20(model, valid)
    print(json.dumps({"system": f"plain {'torch' if a.arch == 'gru' else 'HF'} loop", "arch": a.arch,
                      "train_sequences": len(train), "train_seconds": round(seconds, 2),
                      "train_sequences_per_s": round(len(train) / seconds, 1), "train_loss": round(loss, 4),
                      "ndcg@20": None if math.isnan(ndcg) else ndcg, "threads": a.threads}))


if __name__ == "__main__":
    main()
