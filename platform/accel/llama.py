"""Llama over the real positions of right-padded sessions only (unpad.py).

HF's `LlamaModel` runs every position of the [batch, max_len] block, so about two thirds
of its projections, MLP, RMSNorms and rotary passes were spent on padding. Llama attends
causally, so no real position ever sees a padded one.

`FastLlamaModel` computes the same function for the calls rayrec makes (inputs_embeds and
a 2-D right-padded mask, no cache, default positions) on the real positions' rows: q, k
and v in one matmul, gate and up in one, RMSNorm in one kernel, and attention on the
padded grid (unpad.grid_attention). Parameters and their names are HF's; any other call
(a cache, position ids, left padding, an export trace) goes to HF's own forward.
tests/test_unpadded_bodies.py holds the two equal at the real positions, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import LlamaModel, LlamaRMSNorm, rotate_half

from rayrec.accel.unpad import Rows, grid_attention, linears, rows_of


class FastLlamaModel(LlamaModel):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        plain = (input_ids is None and inputs_embeds is not None and position_ids is None and past_key_values is None
                 and not use_cache and not kwargs)
        rows = rows_of(attention_mask, self) if plain else None
        if rows is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                                   use_cache=use_cache, **kwargs)
        B, L, d = inputs_embeds.shape
        h = rows.gather(inputs_embeds.reshape(B * L, d))
        cos, sin = self.rotary_emb(h, position_ids=torch.arange(L, device=h.device)[None])
        cos, sin = rows.pad(cos[0][rows.positions]), rows.pad(sin[0][rows.positions])
        for layer in self.layers[:self.config.num_hidden_layers]:
            h = h + self_attention(layer.self_attn, rms_norm(layer.input_layernorm, h), cos, sin, rows)
            h = h + mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))
        return BaseModelOutputWithPast(last_hidden_state=rows.scatter(rms_norm(self.norm, h)))


def rms_norm(norm: LlamaRMSNorm, h: torch.Tensor) -> torch.Tensor:
    """HF's RMSNorm (fp32 statistics, the weight applied in the input's dtype), one kernel in fp32."""
    if h.dtype == torch.float32:
        return F.rms_norm(h, (h.shape[-1],), norm.weight, norm.variance_epsilon)
    return norm(h)


def self_attention(a: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: Rows) -> torch.Tensor:
    dh = a.head_dim
    heads, kv_heads = a.q_proj.out_features // dh, a.k_proj.out_features // dh
    qkv = linears(x, [a.q_proj, a.k_proj, a.v_proj]).view(len(x), heads + 2 * kv_heads, dh)
    qk, v = qkv[:, :heads + kv_heads], qkv[:, heads + kv_heads:]
    qk = qk * cos[:, None].to(qk.dtype) + rotate_half(qk) * sin[:, None].to(qk.dtype)
    out = grid_attention(a, torch.cat([qk, v], 1), kv_heads, rows,
                         dropout=a.attention_dropout if a.training else 0.0, scaling=a.scaling)
    return a.o_proj(out)


def mlp(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up = linears(x, [m.gate_proj, m.up_proj]).chunk(2, dim=-1)
    return m.down_proj(m.act_fn(gate) * up)

