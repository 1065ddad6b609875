"""The real positions of right-padded sessions as rows, for the bodies that skip padding
(llama, gpt2, bert, xlnet here; gru rounds its rows the same way).

Sessions average about 6 events of max_len 20, so a body that runs all [batch, max_len]
positions spends about two thirds of its per-position work (projections, MLP, norms) on
padding. Only attention needs the [batch, length] layout, and in it no real position sees
a padded one (causal attention never looks ahead; bidirectional attention masks the
padded keys): `Rows` gathers the real positions once, attention scatters q, k and v into
the grid and gathers its output back.

Under bf16 autocast the rows are padded with zeros to a multiple of 64: oneDNN builds a
matmul kernel per shape (about 2 ms each, measured), and the number of real positions
changes with every batch.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.accel import attention
from rayrec.models.batch import right_padded
from rayrec.models.losses import ROW_QUANTUM, padded


# Above this fraction of real positions the grid is as fast: gathering and scattering cost
# 3-15% of a step when every position is real, and break even near 0.8 (GPT-2 and ELECTRA;
# Llama gains up to 0.85), benchmarks/unpadded_bodies.py
MAX_FILL = 0.75


@dataclass
class Rows:
    real: torch.Tensor   # [n] flat positions of the real events in [B * L], batch-major
    B: int
    L: int
    rows: int            # n rounded up to ROW_QUANTUM

    @property
    def n(self) -> int:
        return len(self.real)

    @property
    def positions(self) -> torch.Tensor:
        return self.real % self.L

    @functools.cached_property
    def key_mask(self) -> torch.Tensor:
        """[B, 1, 1, L]: each session's real keys (an empty session keeps key 0, so that no
        row of scores is all masked, which would be NaN); built once per forward."""
        lengths = torch.bincount(self.real // self.L, minlength=self.B).clamp(min=1)
        return (torch.arange(self.L, device=self.real.device) < lengths[:, None])[:, None, None, :]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, ...] with zero rows appended up to `rows`."""
        return pad_rows(x, self.rows)

    def gather(self, flat: torch.Tensor) -> torch.Tensor:
        """[B * L, ...] -> [rows, ...]."""
        return self.pad(flat.index_select(0, self.real))

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """[rows, ...] -> [B, L, ...], zeros at padding."""
        return x.new_zeros(self.B * self.L, *x.shape[1:]).index_copy(0, self.real, x[:self.n]).view(
            self.B, self.L, *x.shape[1:])


def rounded(n: int) -> int:
    """How many rows to run n real ones on: n in fp32, a multiple of ROW_QUANTUM under bf16
    autocast (see above)."""
    return padded(n, ROW_QUANTUM) if torch.is_autocast_enabled("cpu") else n


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [n, ...] with zero rows appended up to `rows`."""
    return x if len(x) == rows else torch.cat([x, x.new_zeros(rows - len(x), *x.shape[1:])])


def unpads(module: nn.Module) -> bool:
    """Whether accel.apply let `module`'s model skip padding (model.accel_unpad: false runs
    every body on the whole grid, to compare or to rule this out)."""
    state = getattr(module, "rayrec_accel", None)
    return state is not None and state.unpad


def rows_of(attention_mask: torch.Tensor | None, module: nn.Module) -> Rows | None:
    """The rows of a 2-D padding mask, or None where the fast path does not apply: no mask,
    padding between events, sessions that fill more than MAX_FILL of the grid, an export
    trace, or a GPU (where counting the rows is a host sync per forward, and the padded
    grid was never the bottleneck measured)."""
    if (not unpads(module) or attention_mask is None or attention_mask.dim() != 2 or attention_mask.device.type != "cpu"
            or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not right_padded(attention_mask.bool())):
        return None
    B, L = attention_mask.shape
    real = attention_mask.bool().reshape(-1).nonzero().squeeze(1)
    if len(real) > MAX_FILL * B * L:
        return None
    return Rows(real, B, L, rounded(max(len(real), 1)))


def grid_attention(module, qkv: torch.Tensor, kv_heads: int, rows: Rows, dropout: float, scaling: float,
                   causal: bool = True) -> torch.Tensor:
    """Attention of rows qkv [rows, H + 2 Hkv, dh] (q's heads, then k's, then v's) ->
    [rows, H * dh], causal or over each session's real keys, on rayrec's attention (HF's
    sdpa, or its math path with the cheap dropout mask)."""
    heads, dh = qkv.shape[1] - 2 * kv_heads, qkv.shape[2]
    grid = rows.scatter(qkv).transpose(1, 2)                               # [B, H + 2 Hkv, L, dh]
    q, k, v = grid.split([heads, kv_heads, kv_heads], dim=1)
    out, _ = attention.attention_forward(module, q, k, v, None if causal else rows.key_mask, dropout=dropout,
                                         scaling=scaling, is_causal=causal)
    return rows.gather(out.reshape(rows.B * rows.L, heads * dh))           # out: [B, L, H, dh]


def linears(x: torch.Tensor, modules: list[nn.Linear]) -> torch.Tensor:
    """x through several linears with one matmul (their outputs side by side)."""
    bias = None if modules[0].bias is None else torch.cat([m.bias for m in modules])
    return F.linear(x, torch.cat([m.weight for m in modules]), bias)
