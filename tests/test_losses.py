"""The catalogue cross-entropies equal torch's, loss and gradients, over several row blocks."""
import pytest
import torch
import torch.nn.functional as F

from rayrec.accel.losses import LinearCrossEntropy, block_rows, linear_cross_entropy, smoothed_cross_entropy

N, C, D = 300, 20_000, 8  # N spans several blocks of rows


def data(dtype=torch.float64, frozen_w: bool = False):
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(N, D, generator=g, dtype=dtype) * 2).requires_grad_()
    w = torch.randn(C, D, generator=g, dtype=dtype).requires_grad_(not frozen_w)
    b = torch.randn(C, generator=g, dtype=dtype).requires_grad_()
    y = torch.randint(0, C, (N,), generator=g)
    return h, w, b, y


def grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t.requires_grad])


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_linear_cross_entropy_equals_torch(smoothing):
    assert block_rows(C) < N
    h, w, b, y = data()
    want = F.cross_entropy(F.linear(h, w, b), y, label_smoothing=smoothing)
    got = LinearCrossEntropy.apply(h, w, b, y, smoothing)
    assert torch.allclose(got, want, rtol=1e-12)
    for a, e in zip(grads(got, (h, w, b)), grads(want, (h, w, b))):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-14)


def test_linear_cross_entropy_in_float32_and_with_a_frozen_table():
    h, w, b, y = data(torch.float32, frozen_w=True)
    got = linear_cross_entropy(h, w, b, y, 0.0)
    assert got.grad_fn is not None and "LinearCrossEntropy" in type(got.grad_fn).__name__
    want = F.cross_entropy(F.linear(h, w, b), y)
    assert torch.allclose(got, want, rtol=1e-5)
    for a, e in zip(grads(got, (h, w, b)), grads(want, (h, w, b))):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-7)


def test_linear_cross_entropy_under_autocast_and_without_grad():
    h, w, b, y = data(torch.float32)
    want = F.cross_entropy(F.linear(h, w, b), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, b, y, 0.0)
    assert torch.allclose(got, want, rtol=0.02)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, b, y, 0.0), want, rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_logits_cross_entropy_skips_removed_candidates(smoothing):
    """Given logits with -inf columns (the sampled softmax's removed hits): smoothing goes to
    the finite columns only, and the removed ones get no gradient."""
    h, w, b, y = data()
    removed = torch.rand(N, C, generator=torch.Generator().manual_seed(3)) < 0.3
    removed[torch.arange(N), y] = False
    logits = F.linear(h, w, b).masked_fill(removed, float("-inf"))
    got = smoothed_cross_entropy(logits, y, smoothing)
    logp = torch.log_softmax(F.linear(h, w, b).masked_fill(removed, float("-inf")), 1)
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    uniform = -logp.masked_fill(removed, 0).sum(1) / (~removed).sum(1)
    want = ((1 - smoothing) * nll + smoothing * uniform).mean()
    assert torch.allclose(got, want, rtol=1e-12)
    for a, e in zip(grads(got, (h, w, b)), grads(want, (h, w, b))):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("frozen_w", [False, True])
def test_fused_loss_under_bf16_autocast_keeps_fp32_statistics(frozen_w):
    """Under bf16 autocast the fused loss still runs (its matmuls in bf16, the bias folded
    into them), and its loss and every gradient asked for, the bias's also when the
    weights are frozen, stay within bf16's rounding of the fp32 ones."""
    h, w, b, y = data(torch.float32, frozen_w)
    want = F.cross_entropy(F.linear(h, w, b), y, label_smoothing=0.1)
    expected = grads(want, (h, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, b, y, 0.1)
    assert "LinearCrossEntropy" in type(got.grad_fn).__name__ and got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=0.01)
    for a, e in zip(grads(got, (h, w, b)), expected):
        assert a.dtype == torch.float32
        assert float((a - e).norm() / e.norm()) < 0.02
