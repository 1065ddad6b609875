"""rayrec's forwards over real positions only (accel/llama.py, gpt2.py, bert.py) compute
HF's models at every real position, values and gradients, and leave every other call to HF."""
import copy

import pytest
import torch
from transformers import (BertConfig, BertModel, ElectraConfig, ElectraModel, GPT2Config, GPT2Model, LlamaConfig,
                          LlamaModel, RobertaConfig, RobertaModel)

from rayrec.accel import apply
from rayrec.accel.bert import FAST
from rayrec.accel.gpt2 import FastGPT2Model
from rayrec.accel.llama import FastLlamaModel
from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig

LLAMA = dict(vocab_size=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=64, max_position_embeddings=12, attention_dropout=0.0, pad_token_id=None,
             bos_token_id=None, eos_token_id=None)
GPT2 = dict(vocab_size=1, n_positions=12, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, activation_function="gelu_pytorch_tanh")
BERT = dict(vocab_size=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
            type_vocab_size=1)
KINDS = {"llama": (LlamaConfig, LlamaModel, FastLlamaModel, LLAMA), "gpt2": (GPT2Config, GPT2Model, FastGPT2Model, GPT2),
         "electra": (ElectraConfig, ElectraModel, FAST[ElectraModel], {**BERT, "embedding_size": 32}),
         "bert": (BertConfig, BertModel, FAST[BertModel], BERT),
         "roberta": (RobertaConfig, RobertaModel, FAST[RobertaModel], {**BERT, "max_position_embeddings": 14})}
BERT_DROPOUT = {"hidden_dropout_prob": 0.3, "attention_probs_dropout_prob": 0.3}
DROPOUT = {"llama": {"attention_dropout": 0.3}, "gpt2": {"resid_pdrop": 0.3, "embd_pdrop": 0.3, "attn_pdrop": 0.3},
           "electra": BERT_DROPOUT, "bert": BERT_DROPOUT, "roberta": BERT_DROPOUT}


def pair(kind="llama", **overrides):
    config, model, fast_type, settings = KINDS[kind]
    torch.manual_seed(0)
    hf = model._from_config(config(**{**settings, **overrides}))
    fast = copy.deepcopy(hf)
    # the reference: HF's forward (accel's class with the unpadding off falls back to it), with
    # the same dropout and attention functions as the fast one, so that their draws match
    apply(hf, ModelConfig(accel_unpad=False))
    apply(fast, ModelConfig())
    assert type(fast) is fast_type
    return hf, fast


def sessions(B=13, L=12, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[-1] = L
    attend = torch.arange(L) < lengths[:, None]
    return torch.randn(B, L, d, generator=g), attend


def run(model, x, attend, weight):
    x = x.clone().requires_grad_()
    out = model(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    (out * weight).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None] + [x.grad]


@pytest.mark.parametrize("kind,overrides", [("llama", {}), ("llama", {"num_key_value_heads": 2}),
                                            ("llama", {"attention_bias": True, "mlp_bias": True}), ("gpt2", {}),
                                            ("gpt2", {"scale_attn_by_inverse_layer_idx": True}), ("electra", {}),
                                            ("electra", {"is_decoder": True}), ("electra", {"embedding_size": 16}),
                                            ("bert", {}), ("roberta", {})],
                         ids=["llama", "llama-gqa", "llama-biases", "gpt2", "gpt2-layer-scaled", "electra",
                              "electra-decoder", "electra-projected", "bert", "roberta"])
def test_equal_to_hf_at_real_positions_values_and_gradients(kind, overrides):
    hf, fast = pair(kind, **overrides)
    x, attend = sessions(d=overrides.get("embedding_size", 32))   # the embedding's width
    weight = torch.randn(*attend.shape, 32) * attend[..., None]   # the loss reads real positions only
    want, want_grads = run(hf, x, attend, weight)
    got, got_grads = run(fast, x, attend, weight)
    real = attend[..., None]
    assert torch.allclose(got * real, want * real, atol=2e-5)
    assert torch.equal(got[~attend], torch.zeros_like(got[~attend]))
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_under_bf16_autocast_it_stays_close_to_hf(kind):
    hf, fast = pair(kind)
    x, attend = sessions(B=70)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = hf(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
        got = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    assert float((got.float() - want.float())[attend].abs().max()) < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_applies_in_training_only(kind):
    hf, fast = pair(kind, **DROPOUT[kind])
    x, attend = sessions()
    a = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    b = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    assert not torch.allclose(a[attend], b[attend])
    fast.eval(), hf.eval()
    with torch.no_grad():
        got = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
        want = hf(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    assert torch.allclose(got[attend], want[attend], atol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_other_calls_go_to_hf(kind):
    hf, fast = pair(kind)
    x, attend = sessions()
    left = attend.flip(1)     # left padding: not the layout the fast path reads
    full = torch.ones_like(attend)   # nothing to skip (above unpad.MAX_FILL): the grid is as fast
    with torch.no_grad():
        for kwargs in [dict(attention_mask=left.long()), dict(attention_mask=full.long()),
                       dict(attention_mask=attend.long(), use_cache=True),
                       dict(attention_mask=attend.long(), position_ids=torch.arange(12)[None])]:
            got = fast(inputs_embeds=x, **kwargs).last_hidden_state
            want = hf(inputs_embeds=x, **kwargs).last_hidden_state
            assert torch.equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_rayrecs_body_is_the_fast_one_and_clm_still_causal(kind):
    cfg = ModelConfig(arch=kind, d_model=32, n_head=4, n_layer=1, max_len=10, masking="clm")
    body = build_body(cfg)
    apply(body, cfg)
    assert type(body.model) is KINDS[kind][2]
    assert body.causal_by == ("native" if kind in ("llama", "gpt2") else "is_decoder")


@pytest.mark.parametrize("kind,overrides", [("llama", {}), ("gpt2", {}), ("electra", {"is_decoder": True})],
                         ids=["llama", "gpt2", "electra-decoder"])
def test_on_real_rows_no_position_sees_a_later_event(kind, overrides):
    """The causality rayrec's clm relies on, checked on the fast path itself (bodies.is_causal
    probes full sessions, which run on the grid)."""
    _, fast = pair(kind, **overrides)
    fast.eval()
    x, attend = sessions()
    last = attend.sum(1) - 1
    moved = x.clone()
    moved[torch.arange(len(x)), last] += torch.randn(len(x), x.shape[2])
    with torch.no_grad():
        a = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
        b = fast(inputs_embeds=moved, attention_mask=attend.long()).last_hidden_state
    before = torch.arange(attend.shape[1]) < last[:, None]
    assert torch.allclose(a[before], b[before], atol=1e-6)
    assert not torch.allclose(a[torch.arange(len(x)), last], b[torch.arange(len(x)), last], atol=1e-3)
