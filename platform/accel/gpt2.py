"""GPT-2 (rayrec's default body) over the real positions of right-padded sessions only
(unpad.py).

HF's `GPT2Model` runs every position of the [batch, max_len] block, so about two thirds
of its projections, MLP and LayerNorms were spent on padding; GPT-2 attends causally, so
no real position ever sees a padded one. `FastGPT2Model` computes the same function for
the calls rayrec makes (inputs_embeds and a 2-D right-padded mask, no cache, default
positions, no cross-attention) on the real positions' rows, with attention on the padded
grid (unpad.grid_attention) and each dropout where HF draws it. Parameters and their
names are HF's; any other call goes to HF's own forward. tests/test_unpadded_bodies.py holds
the two equal at the real positions, values and gradients.
"""
from __future__ import annotations

from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions
from transformers.models.gpt2.modeling_gpt2 import GPT2Model

from rayrec.accel.unpad import Rows, grid_attention, rows_of


class FastGPT2Model(GPT2Model):
    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None,
                use_cache=None, **kwargs):
        plain = (input_ids is None and inputs_embeds is not None and past_key_values is None and token_type_ids is None
                 and position_ids is None and encoder_hidden_states is None and not use_cache and not kwargs
                 and not self.config.add_cross_attention and self.config._attn_implementation != "eager")
        rows = rows_of(attention_mask, self) if plain else None
        if rows is None:
            return super().forward(input_ids=input_ids, past_key_values=past_key_values, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids,
                                   inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, use_cache=use_cache, **kwargs)
        B, L, d = inputs_embeds.shape
        h = rows.gather(inputs_embeds.reshape(B * L, d)) + rows.pad(self.wpe.weight[rows.positions])
        h = self.drop(h)
        for block in self.h:
            h = h + self_attention(block.attn, block.ln_1(h), rows)
            h = h + block.mlp(block.ln_2(h))
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=rows.scatter(self.ln_f(h)))


def self_attention(a: nn.Module, x, rows: Rows):
    qkv = a.c_attn(x).view(len(x), 3 * a.num_heads, a.head_dim)
    out = grid_attention(a, qkv, a.num_heads, rows, dropout=a.attn_dropout.p if a.training else 0.0,
                         scaling=a.scaling)
    return a.resid_dropout(a.c_proj(out))

