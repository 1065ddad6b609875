"""HF transformers bodies driven by `inputs_embeds`: sequence of vectors in, same shape out.

Token embeddings inside the HF model are never used (rayrec embeds items itself), so the
vocabulary is 1 and every parameter that a forward pass does not touch is frozen; DDP
then needs no find_unused_parameters.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model, XLNetConfig, XLNetModel

from rayrec.models.config import ModelConfig


class HFBody(nn.Module):
    """`causal_perm_mask`: make a bidirectional XLNet causal through its perm_mask (HF's own
    attn_type="uni" fails with padding masks)."""

    def __init__(self, model: nn.Module, causal_perm_mask: bool = False):
        super().__init__()
        self.model = model
        self.causal_perm_mask = causal_perm_mask

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {}
        if self.causal_perm_mask:
            L = x.shape[1]
            future = torch.ones(L, L, dtype=x.dtype, device=x.device).triu(1)
            extra["perm_mask"] = future.expand(x.shape[0], L, L)
        return self.model(inputs_embeds=x, attention_mask=attention_mask.to(x.dtype), **extra).last_hidden_state


def build_body(cfg: ModelConfig) -> HFBody:
    if cfg.arch == "xlnet":
        hf = XLNetModel(XLNetConfig(vocab_size=1, d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
                                    d_inner=4 * cfg.d_model, dropout=cfg.dropout, attn_type="bi", mem_len=None,
                                    pad_token_id=None, bos_token_id=None, eos_token_id=None))
    elif cfg.arch == "gpt2":
        hf = GPT2Model(GPT2Config(vocab_size=1, n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                                  n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                                  attn_pdrop=cfg.dropout, bos_token_id=None, eos_token_id=None))
    else:
        raise ValueError(f"unknown arch {cfg.arch!r}")
    body = HFBody(hf, causal_perm_mask=cfg.arch == "xlnet" and cfg.masking == "clm")
    freeze_unused(body, cfg)
    return body


def freeze_unused(body: HFBody, cfg: ModelConfig) -> None:
    """Run one probe forward/backward and freeze what received no gradient."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = torch.randn(2, cfg.max_len, cfg.d_model)
        mask = torch.ones(2, cfg.max_len)
        mask[1, cfg.max_len // 2:] = 0
        body(x, mask).sum().backward()
    for p in body.parameters():
        if p.grad is None:
            p.requires_grad_(False)
        p.grad = None
