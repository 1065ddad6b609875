"""rayrec's Llama forward over real positions only (llama_fast.py) computes HF's LlamaModel
at every real position, values and gradients, and leaves every other call to HF."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from rayrec.models import attention
from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig
from rayrec.models.llama_fast import FastLlamaModel, use_fast_llama


def pair(**overrides):
    settings = dict(vocab_size=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=64, max_position_embeddings=12, attention_dropout=0.0, pad_token_id=None,
                    bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    hf = LlamaModel._from_config(LlamaConfig(**{**settings, **overrides}), attn_implementation=attention.register())
    fast = use_fast_llama(copy.deepcopy(hf))
    assert type(fast) is FastLlamaModel
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


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 2}, {"attention_bias": True, "mlp_bias": True}],
                         ids=["mha", "gqa", "biases"])
def test_equal_to_hf_at_real_positions_values_and_gradients(overrides):
    hf, fast = pair(**overrides)
    x, attend = sessions()
    weight = torch.randn(*attend.shape, 32) * attend[..., None]   # the loss reads real positions only
    want, want_grads = run(hf, x, attend, weight)
    got, got_grads = run(fast, x, attend, weight)
    real = attend[..., None]
    assert torch.allclose(got * real, want * real, atol=2e-5)
    assert torch.equal(got[~attend], torch.zeros_like(got[~attend]))
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=2e-5, rtol=1e-4)


def test_under_bf16_autocast_it_stays_close_to_hf():
    hf, fast = pair()
    x, attend = sessions(B=70)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = hf(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
        got = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    assert float((got.float() - want.float())[attend].abs().max()) < 0.1


def test_attention_dropout_applies_in_training_only():
    hf, fast = pair(attention_dropout=0.3)
    x, attend = sessions()
    a = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    b = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    assert not torch.allclose(a[attend], b[attend])
    fast.eval(), hf.eval()
    with torch.no_grad():
        got = fast(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
        want = hf(inputs_embeds=x, attention_mask=attend.long()).last_hidden_state
    assert torch.allclose(got[attend], want[attend], atol=2e-5)


def test_other_calls_go_to_hf():
    hf, fast = pair()
    x, attend = sessions()
    left = attend.flip(1)     # left padding: not the layout the fast path reads
    with torch.no_grad():
        for kwargs in [dict(attention_mask=left.long()), dict(attention_mask=attend.long(), use_cache=True),
                       dict(attention_mask=attend.long(), position_ids=torch.arange(12)[None])]:
            got = fast(inputs_embeds=x, **kwargs).last_hidden_state
            want = hf(inputs_embeds=x, **kwargs).last_hidden_state
            assert torch.equal(got, want)


def test_rayrecs_llama_body_is_the_fast_one_and_still_causal():
    body = build_body(ModelConfig(arch="llama", d_model=32, n_head=4, n_layer=1, max_len=10, masking="clm"))
    assert type(body.model) is FastLlamaModel and body.causal_by == "native"
