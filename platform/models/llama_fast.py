"""Llama over the real positions of right-padded sessions only.

HF's `LlamaModel` runs every position of the [batch, max_len] block: sessions average
about 6 events of 20, so about two thirds of its projections, MLP, RMSNorms and rotary
passes were spent on padding. Llama attends causally, so no real position ever sees a
padded one; only attention needs the [batch, length] layout.

`FastLlamaModel` computes the same function for the calls rayrec makes (inputs_embeds and
a 2-D padding mask, no cache, default positions): the real positions are gathered into
rows [N, d] once, every per-position step runs on those rows (q, k and v in one matmul,
gate and up in one), and each layer's attention scatters q, k and v into the padded
layout and gathers its output back. Attention is rayrec's (`attention.py`: HF's sdpa, or
the math path with rayrec's cheap dropout mask when training). The rows are padded with
zeros to a multiple of 64, so that bf16 matmuls meet few shapes (oneDNN builds a kernel per
shape, about 2 ms each). Parameters and their names are HF's; any other call (a cache,
position ids, left padding, an export trace) goes to HF's own forward.
tests/test_llama_fast.py holds the two equal at the real positions, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel, LlamaRMSNorm, rotate_half

from rayrec.models import attention
from rayrec.models.batch import right_padded
from rayrec.models.losses import ROW_QUANTUM, padded


class FastLlamaModel(LlamaModel):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        plain = (input_ids is None and inputs_embeds is not None and position_ids is None and past_key_values is None
                 and not use_cache and not kwargs and attention_mask is not None and attention_mask.dim() == 2
                 and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
                 and right_padded(attention_mask.bool()))
        if not plain:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                                   use_cache=use_cache, **kwargs)
        B, L, d = inputs_embeds.shape
        real = attention_mask.bool().reshape(-1).nonzero().squeeze(1)   # [N] flat positions, batch-major
        n, rows = len(real), padded(max(len(real), 1), ROW_QUANTUM)
        h = _rows(inputs_embeds.reshape(B * L, d).index_select(0, real), rows)
        cos, sin = self.rotary_emb(h, position_ids=torch.arange(L, device=h.device)[None])
        at = real % L
        cos, sin = _rows(cos[0].index_select(0, at), rows), _rows(sin[0].index_select(0, at), rows)
        for layer in self.layers[:self.config.num_hidden_layers]:
            h = h + self_attention(layer.self_attn, rms_norm(layer.input_layernorm, h), cos, sin, real, B, L)
            h = h + mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))
        h = rms_norm(self.norm, h)[:n]
        out = h.new_zeros(B * L, h.shape[1]).index_copy(0, real, h).view(B, L, -1)
        return BaseModelOutputWithPast(last_hidden_state=out)


def _rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [n, ...] with zero rows appended up to `rows`."""
    return x if len(x) == rows else torch.cat([x, x.new_zeros(rows - len(x), *x.shape[1:])])


def rms_norm(norm: LlamaRMSNorm, h: torch.Tensor) -> torch.Tensor:
    """HF's RMSNorm (fp32 statistics, the weight applied in the input's dtype), one kernel in fp32."""
    if h.dtype == torch.float32:
        return F.rms_norm(h, (h.shape[-1],), norm.weight, norm.variance_epsilon)
    return norm(h)


def _linear(x: torch.Tensor, modules: list[nn.Linear]) -> torch.Tensor:
    """x through several linears with one matmul (their outputs side by side)."""
    if len(modules) == 1:
        return modules[0](x)
    bias = None if modules[0].bias is None else torch.cat([m.bias for m in modules])
    return F.linear(x, torch.cat([m.weight for m in modules]), bias)


def self_attention(a: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, real: torch.Tensor,
                   B: int, L: int) -> torch.Tensor:
    n, dh = len(real), a.head_dim
    heads, kv_heads = a.q_proj.out_features // dh, a.k_proj.out_features // dh
    qkv = _linear(x, [a.q_proj, a.k_proj, a.v_proj])                       # [rows, (H + 2 Hkv) dh]
    qk = qkv[:, :(heads + kv_heads) * dh].view(len(qkv), heads + kv_heads, dh)
    qk = qk * cos[:, None].to(qk.dtype) + rotate_half(qk) * sin[:, None].to(qk.dtype)
    qkv = torch.cat([qk.flatten(1), qkv[:, (heads + kv_heads) * dh:]], 1)[:n]
    grid = qkv.new_zeros(B * L, qkv.shape[1]).index_copy(0, real, qkv).view(B, L, -1, dh).transpose(1, 2)
    q, k, v = grid.split([heads, kv_heads, kv_heads], dim=1)                # [B, heads, L, dh]
    out, _ = attention.attention_forward(a, q, k, v, None, dropout=a.attention_dropout if a.training else 0.0,
                                         scaling=a.scaling, is_causal=True)  # [B, L, heads, dh]
    out = _rows(out.reshape(B * L, heads * dh).index_select(0, real), len(x))
    return a.o_proj(out)


def mlp(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up = _linear(x, [m.gate_proj, m.up_proj]).chunk(2, dim=-1)
    return m.down_proj(m.act_fn(gate) * up)


def use_fast_llama(model: nn.Module) -> nn.Module:
    """The real-positions forward for an HF LlamaModel (same parameters); other models pass through."""
    if type(model) is LlamaModel:
        model.__class__ = FastLlamaModel
    return model
