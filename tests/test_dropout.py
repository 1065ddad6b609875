"""rayrec's CPU dropout: its C pass (a hashed mask, recomputed in the backward) and its
torch fallback drop the asked fraction, scale the rest, draw what torch's seed says, and
draw the same mask as each other."""
import pytest
import torch

from rayrec.accel import kernels
from rayrec.accel.dropout import fast_dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_it_drops_p_keeps_the_rest_scaled_and_the_backward_uses_the_same_mask(kernel_path, dtype, p):
    x = (torch.randn(300, 1_001) + 3).to(dtype).requires_grad_()   # no zeros of its own
    torch.manual_seed(0)
    y = fast_dropout(x, p, use_c=kernel_path)
    keep = y != 0
    assert abs((1 - keep.float().mean()) - p) < 0.005
    want = (x.detach().float() / (1 - p))[keep]
    assert torch.allclose(y[keep].float(), want, rtol=2 ** -7 if dtype == torch.bfloat16 else 1e-6)
    g = torch.randn_like(y, dtype=torch.float32).to(dtype)
    y.backward(g)
    assert torch.equal(x.grad == 0, ~keep | (g == 0))
    assert torch.allclose(x.grad[keep].float(), (g.float() / (1 - p))[keep], rtol=2 ** -7 if dtype == torch.bfloat16
                          else 1e-6)


def test_the_seed_fixes_the_draw_and_not_the_thread_count(kernel_path):
    x = torch.randn(64, 2_000) + 3
    draws = []
    for threads, seed in [(1, 4), (2, 4), (2, 5)]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(seed)
            draws.append(fast_dropout(x, 0.2, use_c=kernel_path))
        finally:
            torch.set_num_threads(before)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_a_view_that_is_not_contiguous_and_eval_mode(kernel_path):
    x = (torch.randn(500, 40) + 3).t()
    torch.manual_seed(1)
    y = fast_dropout(x, 0.25, use_c=kernel_path)
    assert y.shape == x.shape and abs(float((y == 0).float().mean()) - 0.25) < 0.02
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert fast_dropout(x, 0.25, training=False) is x and fast_dropout(x, 0.0) is x


@pytest.mark.skipif(kernels.library() is None, reason="no C kernels built here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_the_c_pass_and_the_torch_pass_draw_the_same_mask_from_the_same_seed(dtype, p):
    """A run's numbers do not depend on whether its image had a compiler."""
    x = (torch.randn(37, 1_003) + 3).to(dtype).requires_grad_()
    g = torch.randn(37, 1_003).to(dtype)
    out = {}
    for use_c in (True, False):
        torch.manual_seed(11)
        y = fast_dropout(x, p, use_c=use_c)
        y.backward(g)
        out[use_c] = (y.detach(), x.grad.clone())
        x.grad = None
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
