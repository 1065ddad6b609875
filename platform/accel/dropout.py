"""Dropout whose mask costs less on CPU, and is the same draw with or without a compiler.

torch's CPU dropout draws one Bernoulli sample per element, which on the reference config
took about a fifth of a training step (benchmarks/model_step.py). Here the keep mask is a
counter-based hash of a seed drawn from torch's generator and the element's position
(splitmix64's finalizer, dropout.c): each 64-bit hash gives four 16-bit slices, one per
element, kept when the slice is at least p * 65536, so the keep probability is exact to
1/65536 and torch.manual_seed fixes the draw. The backward recomputes the mask instead of
storing it.

Where the C kernels are built (kernels.py) the mask is made and applied in one pass each
way; elsewhere the same hash runs as torch integer ops, so a run draws the same masks
whether or not its image had a compiler (tests/test_dropout.py holds the two equal). On
CUDA, torch's own dropout (already cheap there) is used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.accel import kernels

GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits (torch's integer ops wrap)."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def keep_scale(n: int, p: float, seed: int, device=None) -> torch.Tensor:
    """[n] fp32: 1 / (1 - p) where dropout.c keeps element i of a draw seeded `seed`, else 0."""
    words = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)
    z = words * _signed(GOLDEN) + _signed(seed & (2**64 - 1))
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    z = z ^ _shr(z, 31)
    slices = torch.stack([_shr(z, 16 * s) & 0xFFFF for s in range(4)], 1).reshape(-1)[:n]
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    return (slices >= round(p * 65536)).to(torch.float32) * scale


def hashed(x: torch.Tensor, p: float, seed: int, use_c: bool) -> torch.Tensor:
    """x * keep / (1 - p), the mask a function of (seed, position) only."""
    x = x.contiguous()
    if not use_c:
        return (x.float().reshape(-1) * keep_scale(x.numel(), p, seed, x.device)).to(x.dtype).view(x.shape)
    out = torch.empty_like(x)
    kernels.library().dropout_apply(x.numel(), x.data_ptr(), out.data_ptr(), int(x.dtype == torch.bfloat16), seed,
                                    round(p * 65536), 1 / (1 - p), torch.get_num_threads())
    return out


class HashedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, seed: int, use_c: bool) -> torch.Tensor:
        ctx.p, ctx.seed, ctx.use_c = p, seed, use_c
        return hashed(x, p, seed, use_c)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return hashed(grad, ctx.p, ctx.seed, ctx.use_c), None, None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True, use_c: bool | None = None) -> torch.Tensor:
    """Dropout with the hashed mask; `use_c` None means: the C kernels where they are built."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return F.dropout(x, p, True)
    if use_c is None:
        use_c = kernels.library() is not None
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return HashedDropout.apply(x, p, seed, use_c and kernels.library() is not None)


class FastDropout(nn.Dropout):
    """nn.Dropout with the hashed mask: accel swaps every nn.Dropout of a model for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training, uses_c(self))


def uses_c(module: nn.Module) -> bool:
    """Whether the C kernels run for `module`: what accel.apply decided for its model."""
    state = getattr(module, "rayrec_accel", None)
    return state is not None and state.kernels
