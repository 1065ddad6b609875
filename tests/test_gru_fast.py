"""rayrec's packed GRU (accel/gru.py) computes torch's GRU at every real position, values
and gradients, with its C gates and with its torch fallback, and leaves what it cannot
pack to torch."""
import pytest
import torch

from conftest import accelerated

from rayrec.accel import gru as gru_fast
from rayrec.models.bodies import RNNBody
from rayrec.models.config import ModelConfig


def sessions(B=29, L=11, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[1], lengths[-1] = 0, L       # an empty row and a full one
    attend = torch.arange(L) < lengths[:, None]
    x = torch.randn(B, L, d, generator=g)
    return x, attend


def grads(rnn, x, run, weight):
    x = x.clone().requires_grad_()
    out = run(x)
    (out * weight).sum().backward()
    got = [p.grad.clone() for p in rnn.parameters()] + [x.grad.clone()]
    rnn.zero_grad(set_to_none=True)
    return out.detach(), got


@pytest.mark.parametrize("layers,d_in", [(1, 24), (2, 24), (3, 7)])
def test_equal_to_torch_at_real_positions_values_and_gradients(kernel_path, layers, d_in):
    torch.manual_seed(0)
    rnn = accelerated(torch.nn.GRU(d_in, 24, layers, batch_first=True), kernel_path)
    x, attend = sessions(d=d_in)
    weight = torch.randn(*attend.shape, 24) * attend[..., None]   # the loss reads real positions only
    want, want_grads = grads(rnn, x, lambda v: rnn(v)[0], weight)
    got, got_grads = grads(rnn, x, lambda v: gru_fast.gru(rnn, v, attend), weight)
    real = attend[..., None]
    assert torch.allclose(got * real, want * real, atol=1e-6)
    assert torch.equal(got[~attend], torch.zeros_like(got[~attend]))
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-4)


def test_inference_keeps_nothing_for_a_backward_and_gives_the_same_values(kernel_path):
    torch.manual_seed(1)
    rnn = accelerated(torch.nn.GRU(16, 16, 2, batch_first=True).eval(), kernel_path)
    x, attend = sessions(d=16)
    with torch.no_grad():
        assert torch.allclose(gru_fast.gru(rnn, x, attend) * attend[..., None], rnn(x)[0] * attend[..., None],
                              atol=1e-6)


def test_under_bf16_autocast_it_stays_close_to_torch(kernel_path):
    torch.manual_seed(2)
    rnn = accelerated(torch.nn.GRU(32, 32, 2, batch_first=True), kernel_path)
    x, attend = sessions(B=100, d=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = gru_fast.gru(rnn, x, attend)
    want = rnn(x)[0]
    assert got.dtype == torch.float32
    assert float((got - want).detach()[attend].abs().max()) < 0.03


def test_dropout_between_layers_only_in_training(kernel_path):
    torch.manual_seed(3)
    rnn = accelerated(torch.nn.GRU(16, 16, 2, batch_first=True, dropout=0.5), kernel_path)
    x, attend = sessions(d=16)
    a, b = gru_fast.gru(rnn, x, attend), gru_fast.gru(rnn, x, attend)
    assert not torch.allclose(a, b)
    rnn.eval()
    assert torch.allclose(gru_fast.gru(rnn, x, attend) * attend[..., None], rnn(x)[0] * attend[..., None],
                          atol=1e-6)


def test_padding_between_events_goes_to_torch():
    torch.manual_seed(4)
    body = RNNBody(ModelConfig(arch="gru", d_model=16, n_layer=1, max_len=8))
    body.__class__ = gru_fast.FastRNNBody
    accelerated(body)
    x, attend = sessions(B=4, L=8, d=16)
    attend[0] = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    assert gru_fast.gru(body.rnn, x, attend) is None
    assert torch.equal(body(x, attend), body.rnn(x)[0])
    assert not gru_fast.applies(accelerated(torch.nn.LSTM(16, 16, batch_first=True)), x)
