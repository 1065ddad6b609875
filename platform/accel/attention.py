"""HF attention whose dropout on the attention probabilities costs less on CPU.

With dropout on, torch's CPU scaled_dot_product_attention takes its math path and draws
the dropout mask with `bernoulli_`: on ELECTRA at d_model 64 that was 5.5% of a bf16
training step (2.5 ms per layer for a [256, 4, 20, 20] mask). This computes the same math
path with rayrec's cheap mask (accel/dropout.py). Without dropout (eval, serving,
export, p = 0) or off the CPU it is HF's own sdpa attention, untouched.

It is registered with transformers under its own name, with sdpa's mask builder, so HF
builds the same boolean masks (padding, causal) for it as for sdpa.
"""
from __future__ import annotations

import torch

from rayrec.accel.dropout import fast_dropout, uses_c

NAME = "rayrec_sdpa"


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      is_causal=None, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if not dropout or query.device.type != "cpu" or kwargs.get("cache") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query * (query.shape[-1] ** -0.5 if scaling is None else scaling), key.transpose(-1, -2))
    if attention_mask is not None:
        mask = attention_mask[..., :key.shape[-2]]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool \
            else scores + mask
    elif query.shape[-2] > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        future = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).triu(1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probs = fast_dropout(torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype), dropout, True,
                         uses_c(module))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make NAME known to transformers (idempotent); returns it for `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
