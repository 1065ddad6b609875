"""BERT-style encoders (ELECTRA, BERT, RoBERTa) over the real positions of right-padded
sessions only (unpad.py).

HF runs every position of the [batch, max_len] block, so about two thirds of these
models' projections, MLPs and LayerNorms were spent on padding. Attention masks the padded
keys (or looks only back, as a decoder), so the real positions never depend on the
padded ones. The embeddings (positions, token types, LayerNorm) are HF's own module on the
whole grid, so each family's position scheme is kept (RoBERTa counts from padding_idx + 1);
every layer after them runs on the real rows, q, k and v in one matmul. Parameters and
their names are HF's; any other call (a cache, cross-attention, chunked feed-forward, an
export trace) goes to HF's own forward. tests/test_unpadded_bodies.py holds the two equal
at the real positions, values and gradients.
"""
from __future__ import annotations

from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions
from transformers.models.bert.modeling_bert import BertModel
from transformers.models.electra.modeling_electra import ElectraModel
from transformers.models.roberta.modeling_roberta import RobertaModel

from rayrec.accel.unpad import Rows, grid_attention, linears, rows_of


class EncoderRows:
    """forward of an HF BERT-style model on the real rows (mixed in before the HF class)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, past_key_values=None,
                use_cache=None, **kwargs):
        cfg = self.config
        plain = (input_ids is None and inputs_embeds is not None and token_type_ids is None and position_ids is None
                 and encoder_hidden_states is None and past_key_values is None and not use_cache and not kwargs
                 and not cfg.add_cross_attention and not cfg.chunk_size_feed_forward
                 and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
                 and cfg._attn_implementation != "eager")
        rows = rows_of(attention_mask, self) if plain else None
        if rows is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                   position_ids=position_ids, inputs_embeds=inputs_embeds,
                                   encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, past_key_values=past_key_values,
                                   use_cache=use_cache, **kwargs)
        B, L, _ = inputs_embeds.shape
        embedded = self.embeddings(inputs_embeds=inputs_embeds)
        h = rows.gather(embedded.reshape(B * L, -1))
        if hasattr(self, "embeddings_project"):
            h = self.embeddings_project(h)
        for layer in self.encoder.layer:
            h = layer.attention.output(self_attention(layer.attention.self, h, rows, cfg.is_decoder), h)
            h = layer.output(layer.intermediate(h), h)
        out = rows.scatter(h)
        pooler = getattr(self, "pooler", None)
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=out,
                                                            pooler_output=pooler(out) if pooler is not None else None)


def self_attention(s: nn.Module, x, rows: Rows, causal: bool):
    heads, dh = s.num_attention_heads, s.attention_head_size
    qkv = linears(x, [s.query, s.key, s.value]).view(len(x), 3 * heads, dh)
    return grid_attention(s, qkv, heads, rows, dropout=s.dropout.p if s.training else 0.0, scaling=s.scaling,
                          causal=causal)


class FastElectraModel(EncoderRows, ElectraModel):
    pass


class FastBertModel(EncoderRows, BertModel):
    pass


class FastRobertaModel(EncoderRows, RobertaModel):
    pass


FAST = {ElectraModel: FastElectraModel, BertModel: FastBertModel, RobertaModel: FastRobertaModel}

