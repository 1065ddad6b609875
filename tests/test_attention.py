"""rayrec's HF attention: the same math as sdpa, with the cheap dropout mask in training,
and HF's padding and causal masks still applied (it is registered with sdpa's mask builder)."""
import pytest
import torch
import torch.nn.functional as F

from rayrec.accel import apply
from rayrec.accel.attention import NAME, attention_forward
from rayrec.accel.dropout import fast_dropout
from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig


class Module(torch.nn.Module):
    is_causal = False


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, 6, 8, generator=g) for _ in range(3)]


def test_without_dropout_it_is_sdpa_and_with_dropout_the_math_path_with_rayrecs_mask():
    q, k, v = qkv()
    mask = torch.ones(3, 1, 6, 6, dtype=torch.bool)
    mask[1, :, :, 4:] = False  # row 1's last two keys are padding
    out, _ = attention_forward(Module(), q, k, v, mask, dropout=0.0)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    assert torch.allclose(out, want, atol=1e-6)

    p = 0.3
    torch.manual_seed(5)
    out, _ = attention_forward(Module(), q, k, v, mask, dropout=p)
    torch.manual_seed(5)
    probs = torch.softmax((q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf")), -1)
    keep = fast_dropout(torch.ones(probs.shape), p) != 0   # the mask this seed draws
    want = ((probs * keep / (1 - p)) @ v).transpose(1, 2)
    assert torch.allclose(out, want, atol=1e-6)
    assert 0.25 < 1 - keep.float().mean() < 0.35


def test_causal_without_a_mask_hides_the_future_in_training():
    q, k, v = qkv(1)
    module = Module()
    module.is_causal = True
    torch.manual_seed(2)
    a, _ = attention_forward(module, q, k, v, None, dropout=0.2)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1], v2[:, :, -1] = 9.0, -9.0
    torch.manual_seed(2)
    b, _ = attention_forward(module, q, k2, v2, None, dropout=0.2)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


@pytest.mark.parametrize("arch,masking", [("electra", "mlm"), ("albert", "mlm"), ("bert", "mlm"),
                                          ("gpt2", "clm"), ("llama", "clm")])
def test_hf_bodies_use_it_and_padding_stays_hidden_with_dropout_on(arch, masking):
    cfg = ModelConfig(arch=arch, masking=masking, d_model=16, n_head=2, n_layer=2, max_len=8, dropout=0.3)
    body = build_body(cfg).train()
    apply(body, cfg)
    assert body.model.config._attn_implementation == NAME
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 16, generator=g)
    attend = torch.ones(4, 8, dtype=torch.bool)
    attend[:, 5:] = False
    moved = x.clone()
    moved[:, 5:] = torch.randn(4, 3, 16, generator=g) * 10
    torch.manual_seed(3)
    a = body(x, attend)
    torch.manual_seed(3)
    b = body(moved, attend)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5)
    torch.manual_seed(4)
    assert not torch.equal(body(x, attend), a)  # dropout is on: another draw, other outputs
