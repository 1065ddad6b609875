"""rayrec's batch-major XLNet forward computes HF XLNetModel's function, values and gradients,
at every real position; with a right-padded mask it runs only those (unpad.py), and its
outputs at padding are zeros (HF's there are never read)."""
import pytest
import torch
from transformers import XLNetConfig, XLNetModel

from conftest import accelerated

from rayrec.accel import apply
from rayrec.accel.xlnet import FastXLNetModel
from rayrec.models.bodies import build_body
from rayrec.models.config import ModelConfig


def use_fast_xlnet(model):
    """accel's swap of an XLNetModel alone (its dropout modules kept, as in HF's)."""
    if type(model) is XLNetModel:
        model.__class__ = FastXLNetModel
    return accelerated(model)

B, L, D = 6, 9, 32


def pair(dropout: float = 0.0, dtype=torch.float64, **settings):
    cfg = XLNetConfig(vocab_size=1, d_model=D, n_layer=2, n_head=4, d_inner=4 * D, dropout=dropout,
                      attn_type="bi", mem_len=None, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                      **settings)
    torch.manual_seed(0)
    hf = XLNetModel(cfg).to(dtype)
    with torch.no_grad():  # HF initialises the attention biases to zero: make them matter
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast = XLNetModel(cfg).to(dtype)
    fast.load_state_dict(hf.state_dict())
    return hf, use_fast_xlnet(fast)


def inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, D, generator=g, dtype=dtype)
    attend = torch.ones(B, L, dtype=dtype)
    attend[0, 5:] = 0
    attend[1, 1:] = 0  # one real event: every other position is padding
    attend[3, 7:] = 0
    return x, attend


def test_swapped_in_only_for_xlnet_and_keeps_parameter_names():
    hf, fast = pair()
    assert type(fast) is FastXLNetModel and type(hf) is XLNetModel
    assert list(fast.state_dict()) == list(hf.state_dict())
    linear = torch.nn.Linear(2, 2)
    apply(linear, ModelConfig())
    assert type(linear) is torch.nn.Linear
    cfg = ModelConfig(arch="xlnet", masking="mlm", d_model=D, n_head=4, n_layer=2, max_len=L)
    body = build_body(cfg)
    apply(body, cfg)
    assert type(body.model) is FastXLNetModel


@pytest.mark.parametrize("masks", ["padding", "padding+causal", "none"])
@pytest.mark.parametrize("train", [False, True])
def test_values_and_gradients_equal_hf(masks, train):
    hf, fast = pair()
    x, attend = inputs()
    w = torch.randn(B, L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    real = torch.ones(B, L, 1, dtype=torch.float64) if masks == "none" else attend[..., None]
    w = w * real   # the loss reads real positions only
    kwargs = {} if masks == "none" else {"attention_mask": attend}
    if masks == "padding+causal":
        kwargs["perm_mask"] = torch.ones(L, L, dtype=torch.float64).triu(1).expand(B, L, L)
    outs, grads = [], []
    for model in (hf, fast):
        model.train(train)
        xi = x.clone().requires_grad_()
        out = model(inputs_embeds=xi, **kwargs).last_hidden_state
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    assert torch.allclose(outs[0] * real, outs[1] * real, rtol=1e-10, atol=1e-10)
    assert not (outs[1] * (1 - real)).any()
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_position_scores_really_depend_on_distance():
    """Breaking the relative shift (one position off) must change the output."""
    hf, fast = pair()
    x, attend = inputs()
    fast.eval()
    good = fast(inputs_embeds=x, attention_mask=attend).last_hidden_state
    pos = fast.relative_positional_encoding

    def shifted(qlen, klen, bsz=None, device=None):
        return torch.roll(pos(qlen, klen, bsz=bsz, device=device), 1, 0)

    fast.relative_positional_encoding = shifted
    bad = fast(inputs_embeds=x, attention_mask=attend).last_hidden_state
    assert not torch.allclose(good, bad, atol=1e-4)


def test_other_calls_use_hf_forward():
    hf, fast = pair(dtype=torch.float32)  # HF's query stream itself runs in fp32 only
    x, attend = inputs(torch.float32)
    for m in (hf, fast):
        m.eval()
    mapping = torch.eye(L).expand(B, L, L)
    perm = torch.zeros(B, L, L)
    perm[:, :, -1] = 1
    a = hf(inputs_embeds=x, attention_mask=attend, perm_mask=perm, target_mapping=mapping, output_hidden_states=True)
    b = fast(inputs_embeds=x, attention_mask=attend, perm_mask=perm, target_mapping=mapping, output_hidden_states=True)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and len(b.hidden_states) == len(a.hidden_states)


def test_dropout_is_drawn_in_training_and_off_in_eval():
    hf, fast = pair(dropout=0.3, dtype=torch.float32)
    x, attend = inputs(torch.float32)
    fast.train()
    a = fast(inputs_embeds=x, attention_mask=attend).last_hidden_state
    b = fast(inputs_embeds=x, attention_mask=attend).last_hidden_state
    assert not torch.allclose(a, b)
    fast.eval()
    hf.eval()
    real = attend.bool()
    assert torch.allclose(fast(inputs_embeds=x, attention_mask=attend).last_hidden_state[real],
                          hf(inputs_embeds=x, attention_mask=attend).last_hidden_state[real], atol=1e-5)


def test_bf16_autocast_stays_close_to_hf():
    hf, fast = pair(dtype=torch.float32)
    x, attend = inputs(torch.float32)
    outs = []
    for m in (hf, fast):
        m.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(m(inputs_embeds=x, attention_mask=attend).last_hidden_state.float()[attend.bool()])
    assert torch.allclose(outs[0], outs[1], atol=0.1)
    assert (outs[0] - outs[1]).abs().mean() < 0.02


def test_fp32_training_without_dropout_takes_fused_attention_and_keeps_position_gradients():
    """With no dropout to draw, training runs torch's fused attention in fp32, whose
    backward must still carry the gradient of the position scores (its additive mask)."""
    hf, fast = pair(dtype=torch.float32)
    x, attend = inputs(torch.float32)
    for m in (hf, fast):
        m.train()
        (m(inputs_embeds=x, attention_mask=attend).last_hidden_state * attend[..., None]).square().sum().backward()
    for name, p in hf.named_parameters():
        q = dict(fast.named_parameters())[name]
        if p.grad is not None:
            assert q.grad.abs().max() > 0 or p.grad.abs().max() == 0, name
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-5 * p.grad.abs().max()), name
