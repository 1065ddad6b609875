"""Sequence bodies: vectors [B, L, d] in, vectors [B, L, d] out.

Transformers come from HF by `model_type` name, fed `inputs_embeds` (rayrec embeds items
itself, so HF's vocabulary is 1). GRU and LSTM are the RNN baselines.

Causality is measured, not assumed: `build_body` perturbs the last position of a probe
input and checks whether earlier outputs move. A body trained with clm must not let a
position see its future (the reference system leaked labels exactly there), so a
bidirectional model is made causal (is_decoder, or a 4-D attention mask, or XLNet's
perm_mask) and the probe must confirm it, else the build fails.

Every parameter a training step leaves without gradient is frozen (HF's own word
embeddings, XLNet's unused segment biases...), so DDP needs no find_unused_parameters.

These are HF's and torch's modules as they are; accel swaps in faster forwards of the
same functions (accel/__init__.py), never this module.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rayrec.models.config import ModelConfig

CAUSAL_NATIVE, CAUSAL_DECODER, CAUSAL_MASK4D, CAUSAL_PERM = "native", "is_decoder", "mask4d", "perm_mask"


# GPT-2's and ALBERT's default "gelu_new" is the tanh GELU as seven elementwise ops (pow,
# mul, add, tanh...), a tenth of a CPU training step at d_model 192; torch's one-kernel
# tanh GELU computes the same function (within 1.2e-7).
TANH_GELU = "gelu_pytorch_tanh"


def hf_settings(cfg: ModelConfig) -> dict:
    """Small recommendation defaults per family: vocabulary 1, positions = max_len."""
    d, L, h, n, p = cfg.d_model, cfg.max_len, cfg.n_head, cfg.n_layer, cfg.dropout
    bert_like = dict(vocab_size=1, hidden_size=d, num_hidden_layers=n, num_attention_heads=h,
                     intermediate_size=4 * d, max_position_embeddings=L, hidden_dropout_prob=p,
                     attention_probs_dropout_prob=p, pad_token_id=0, type_vocab_size=1)
    family = {
        "xlnet": dict(vocab_size=1, d_model=d, n_layer=n, n_head=h, d_inner=4 * d, dropout=p, attn_type="bi",
                      mem_len=None, pad_token_id=None, bos_token_id=None, eos_token_id=None),
        "gpt2": dict(vocab_size=1, n_positions=L, n_embd=d, n_layer=n, n_head=h, resid_pdrop=p, embd_pdrop=p,
                     attn_pdrop=p, bos_token_id=None, eos_token_id=None, activation_function=TANH_GELU),
        "bert": bert_like,
        "roberta": {**bert_like, "max_position_embeddings": L + 2, "bos_token_id": None, "eos_token_id": None},
        "electra": {**bert_like, "embedding_size": d},
        "albert": {**bert_like, "embedding_size": d, "bos_token_id": None, "eos_token_id": None,
                   "hidden_act": TANH_GELU},
        "longformer": {**bert_like, "attention_window": 2 * math.ceil(L / 2),
                       "max_position_embeddings": 2 * math.ceil(L / 2) + 2, "sep_token_id": None,
                       "bos_token_id": None, "eos_token_id": None},
        "reformer": dict(vocab_size=1, hidden_size=d, num_hidden_layers=n, num_attention_heads=h,
                         attention_head_size=d // h, feed_forward_size=4 * d, attn_layers=["local"] * n,
                         local_attn_chunk_length=L, axial_pos_shape=[1, L], axial_pos_embds_dim=[d // 2, d - d // 2],
                         max_position_embeddings=L, hidden_dropout_prob=p, local_attention_probs_dropout_prob=p,
                         pad_token_id=0, eos_token_id=None),
        "llama": dict(vocab_size=1, hidden_size=d, num_hidden_layers=n, num_attention_heads=h, num_key_value_heads=h,
                      intermediate_size=4 * d, max_position_embeddings=L, attention_dropout=p,
                      pad_token_id=None, bos_token_id=None, eos_token_id=None),
    }
    family["mistral"] = {**family["llama"], "sliding_window": None}
    generic = dict(vocab_size=1, hidden_size=d, num_hidden_layers=n, num_attention_heads=h, intermediate_size=4 * d,
                   max_position_embeddings=L)
    return {**family.get(cfg.arch, generic), **cfg.hf_config}


class HFBody(nn.Module):
    def __init__(self, model: nn.Module, cfg: ModelConfig, causal_by: str | None):
        super().__init__()
        self.model, self.causal_by = model, causal_by
        self.is_xlnet = cfg.arch == "xlnet"
        width = probe_width(model, cfg)
        self.out = nn.Linear(width, cfg.d_model) if width != cfg.d_model else nn.Identity()  # Reformer: 2d

    def forward(self, x: torch.Tensor, attend: torch.Tensor, perm_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`perm_mask` [B, L, L] (XLNet plm): 1 where query i may not see position j; the
        outputs are then XLNet's query stream, which never sees a position's own content."""
        extra: dict = {}
        mask = attend.to(x.dtype)
        L = x.shape[1]
        if perm_mask is not None:
            eye = torch.eye(L, dtype=x.dtype, device=x.device).expand(x.shape[0], L, L)
            extra = {"perm_mask": perm_mask.to(x.dtype), "target_mapping": eye}
        elif self.causal_by == CAUSAL_PERM:
            extra = {"perm_mask": torch.ones(L, L, dtype=x.dtype, device=x.device).triu(1).expand(x.shape[0], L, L)}
        elif self.causal_by == CAUSAL_MASK4D:
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            mask = (causal[None] & attend[:, None, :].bool())[:, None]
        return self.out(self.model(inputs_embeds=x, attention_mask=mask, **extra).last_hidden_state)


class RNNBody(nn.Module):
    """GRU / LSTM over right-padded sequences: padding comes after every real position, so
    the outputs at real positions never depend on it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kind = nn.GRU if cfg.arch == "gru" else nn.LSTM
        self.rnn = kind(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True,
                        dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.causal_by = CAUSAL_NATIVE

    def forward(self, x: torch.Tensor, attend: torch.Tensor, perm_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.rnn(x)[0]


def build_body(cfg: ModelConfig) -> nn.Module:
    if cfg.is_rnn:
        body: nn.Module = RNNBody(cfg)
    else:
        body = _build_hf(cfg)
    freeze_unused(body, cfg)
    return body


def _build_hf(cfg: ModelConfig) -> HFBody:
    from transformers import AutoConfig

    settings = hf_settings(cfg)
    try:
        AutoConfig.for_model(cfg.arch)
    except ValueError:
        raise ValueError(f"model.arch {cfg.arch!r} is neither gru/lstm nor a transformers model type") from None
    # one draw from the caller's generator seeds the body (so train.seed varies its initial
    # weights), whichever of the variants below is kept: the caller's stream moves by one
    seed = int(torch.randint(0, 2**62, (1,)))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        body = HFBody(hf_model(AutoConfig.for_model(cfg.arch, **settings)), cfg, None)
        if is_causal(body, cfg):
            body.causal_by = CAUSAL_NATIVE
            return body
        if cfg.masking != "clm":
            return body
        if cfg.arch == "xlnet":
            body.causal_by = CAUSAL_PERM
        elif cfg.arch not in ("longformer",):  # try is_decoder, then an explicit 4-D mask
            decoder = HFBody(hf_model(AutoConfig.for_model(cfg.arch, **settings, is_decoder=True)), cfg, None)
            if _safe_causal(decoder, cfg):
                decoder.causal_by = CAUSAL_DECODER
                return decoder
            body.causal_by = CAUSAL_MASK4D
    if not _safe_causal(body, cfg):
        raise ValueError(f"model.arch {cfg.arch} cannot be made to attend causally, so it cannot train with "
                         "clm without seeing the future; use masking mlm, plm or rtd")
    return body


def hf_model(config) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_config(config)


def _safe_causal(body: HFBody, cfg: ModelConfig) -> bool:
    try:
        return is_causal(body, cfg)
    except (RuntimeError, ValueError, TypeError):
        return False


def probe_inputs(cfg: ModelConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.max_len, cfg.d_model, generator=g)
    attend = torch.ones(batch, cfg.max_len, dtype=torch.bool)
    return x, attend


@torch.no_grad()
def is_causal(body: nn.Module, cfg: ModelConfig) -> bool:
    """True when no output before the last position depends on the last position's input."""
    was = body.training
    body.eval()
    x, attend = probe_inputs(cfg)
    moved = x.clone()
    moved[:, -1] = torch.randn(x.shape[0], x.shape[2], generator=torch.Generator().manual_seed(1))
    a, b = body(x, attend), body(moved, attend)
    body.train(was)
    return bool(torch.allclose(a[:, :-1], b[:, :-1], atol=1e-5)) and not torch.allclose(a[:, -1], b[:, -1], atol=1e-3)


def probe_width(model: nn.Module, cfg: ModelConfig) -> int:
    with torch.no_grad():
        x, attend = probe_inputs(cfg, 1)
        was = model.training
        model.eval()
        width = model(inputs_embeds=x, attention_mask=attend.float()).last_hidden_state.shape[-1]
        model.train(was)
    return width


def freeze_unused(body: nn.Module, cfg: ModelConfig) -> None:
    """One probe training step in the mode training uses; freeze what got no gradient."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x, attend = probe_inputs(cfg)
        attend[1, cfg.max_len // 2:] = False
        perm = None
        if cfg.masking == "plm" and getattr(body, "is_xlnet", False):
            perm = torch.zeros(2, cfg.max_len, cfg.max_len)
            perm[:, :, -1] = 1
        body.train()
        body(x, attend, perm).sum().backward()
    for p in body.parameters():
        if p.grad is None:
            p.requires_grad_(False)
        p.grad = None
