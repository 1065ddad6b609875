"""XLNet's content stream, computed batch-major with fused projections.

HF's `XLNetModel` works in XLNet's original [length, batch] layout through einsums:
inputs and outputs are transposed, every projection runs as a batch-1 bmm, every score
product relayouts its operands, the padding mask is permuted and scaled again in each
layer, and the relative shift is a reshape plus an `index_select` over the last axis (4.3
ms of a 120 ms CPU step on the reference config, benchmarks/model_step.py).

`FastXLNetModel` computes the same function for the calls rayrec makes (inputs_embeds,
padding mask, optional perm_mask, no memory, segments or query stream): [batch, length]
throughout, q, k and v in one matmul, the mask turned into an additive bias once, the
relative shift as a strided view of the position scores (row i starts at column L - i),
and torch's fused attention when no dropout is drawn. With a right-padded 2-D mask only the
real positions run (unpad.py): projections and the feed-forward on their rows, the scores
on the grid. Parameters and their names are
HF's, so checkpoints and the probes in `bodies` are unchanged; any other call goes to
HF's own forward. tests/test_xlnet_fast.py holds the two equal, values and gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.xlnet.modeling_xlnet import XLNetModel, XLNetModelOutput, XLNetRelativeAttention

from rayrec.accel.unpad import Rows, rows_of


class FastXLNetModel(XLNetModel):
    def forward(self, input_ids=None, attention_mask=None, mems=None, perm_mask=None, target_mapping=None,
                token_type_ids=None, input_mask=None, inputs_embeds=None, use_mems=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        plain = (input_ids is None and inputs_embeds is not None and mems is None and target_mapping is None
                 and token_type_ids is None and input_mask is None and not use_mems and not output_attentions
                 and not output_hidden_states and return_dict is not False and not kwargs
                 and self.attn_type == "bi" and not self.bi_data and self.config.chunk_size_feed_forward == 0)
        if not plain:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, mems=mems,
                                   perm_mask=perm_mask, target_mapping=target_mapping,
                                   token_type_ids=token_type_ids, input_mask=input_mask, inputs_embeds=inputs_embeds,
                                   use_mems=use_mems, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states, return_dict=return_dict, **kwargs)
        B, L, d = inputs_embeds.shape
        bias = mask_bias(attention_mask, perm_mask, L, self.dtype)
        # the real positions' rows (unpad.py) where the mask is a right-padded 2-D one
        rows = rows_of(attention_mask, self) if attention_mask is not None and attention_mask.dim() == 2 else None
        h = self.dropout(inputs_embeds if rows is None else rows.gather(inputs_embeds.reshape(B * L, d)))
        pos = self.relative_positional_encoding(L, L, device=h.device)[:, 0]  # [2L, d], distances L..-L+1
        r = self.dropout(pos.expand(B, *pos.shape))  # HF drops out each sequence's copy
        for layer in self.layer:
            h = layer.ff(attend(layer.rel_attn, h, bias, r, rows))
        h = self.dropout(h)
        # HF's model returns mems whenever use_mems_eval is set; nothing here reads them
        return XLNetModelOutput(last_hidden_state=h if rows is None else rows.scatter(h))


def mask_bias(attention_mask, perm_mask, L: int, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, 1, L, L] additive bias: HF's -1e30 (fp16: -65500) where query i may not see key j.

    As in HF, a padded or permuted-away key is hidden, except from its own position."""
    blocked = None
    if attention_mask is not None:
        blocked = (1.0 - attention_mask.to(dtype))[:, None, :]
    if perm_mask is not None:
        blocked = perm_mask.to(dtype) if blocked is None else blocked + perm_mask.to(dtype)
    if blocked is None:
        return None
    at = torch.arange(L, device=blocked.device)
    eye = at[:, None] == at[None, :]  # not torch.eye: ONNX Runtime has no boolean EyeLike
    hidden = (blocked > 0) & ~eye
    big = -65500.0 if dtype == torch.float16 else -1e30
    return torch.zeros(hidden.shape, dtype=dtype, device=hidden.device).masked_fill_(hidden, big)[:, None]


def attend(a: XLNetRelativeAttention, h: torch.Tensor, bias: torch.Tensor | None, r: torch.Tensor,
           rows: Rows | None = None) -> torch.Tensor:
    """One XLNet attention block: h [B, L, d] (or the real positions' rows [R, d] of `rows`:
    only the scores need the grid), bias [B, 1, L, L], r [B, 2L, d] (eval: an expanded view)."""
    d = h.shape[-1]
    B, L = (rows.B, rows.L) if rows is not None else h.shape[:2]
    n, dh = a.n_head, a.d_head
    weights = torch.cat([a.q.view(d, n * dh), a.k.view(d, n * dh), a.v.view(d, n * dh)], 1)
    qkv = h.reshape(-1, d) @ weights
    if rows is not None:
        qkv = rows.scatter(qkv)
    q, k, v = qkv.view(B, L, 3, n, dh).permute(2, 0, 3, 1, 4).unbind(0)  # [B, n, L, dh]
    scores = position_scores(a, q + a.r_r_bias[:, None], r) * a.scale
    if bias is not None:
        scores = scores + bias
    q_w = q + a.r_w_bias[:, None]
    if a.training and a.dropout.p > 0:  # rayrec's cheap dropout mask, not SDPA's Bernoulli draw
        logits = torch.baddbmm(scores.reshape(B * n, L, L), q_w.reshape(B * n, L, dh),
                               k.reshape(B * n, L, dh).transpose(1, 2), alpha=a.scale)
        out = a.dropout(logits.softmax(-1)).view(B, n, L, L) @ v
    else:
        out = F.scaled_dot_product_attention(q_w, k, v, attn_mask=scores.to(q.dtype), scale=a.scale)
    out = out.transpose(1, 2).reshape(B * L, n * dh)
    if rows is not None:
        out = rows.gather(out)
    out = out @ a.o.view(d, n * dh).t()
    return a.layer_norm(a.dropout(out.view(h.shape)) + h)


def position_scores(a: XLNetRelativeAttention, q_r: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """[B, n, L, L]: query i against relative distance i - j (r's row L - i + j).

    HF computes [L, 2L] scores per head and shifts row i left by L - i; a contiguous
    [.., L, 2L] tensor viewed with row stride 2L - 1 from offset L is exactly that shift."""
    B, n, L, dh = q_r.shape
    R, d = r.shape[1], r.shape[2]
    w = a.r.view(d, n * dh)
    r = r.to(w.dtype)
    if r.stride(0) == 0:  # the same positions for every sequence: project them once
        k_r = (r[0] @ w).view(R, n, dh).permute(1, 2, 0)  # [n, dh, 2L]
    else:
        k_r = (r.reshape(B * R, d) @ w).view(B, R, n, dh).permute(0, 2, 3, 1)  # [B, n, dh, 2L]
    full = (q_r @ k_r).contiguous()  # [B, n, L, 2L]
    if torch.jit.is_tracing():  # exports (TorchScript, ONNX): the shift as reshapes, free of fixed sizes
        return full.reshape(B, n, R, L)[:, :, 1:].reshape(B, n, L, R - 1)[..., :L]
    s = full.stride()
    return full.as_strided((B, n, L, L), (s[0], s[1], R - 1, 1), full.storage_offset() + R - L)

