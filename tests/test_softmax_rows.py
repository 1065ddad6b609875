"""The C row passes of the fused loss (softmax_rows.c) equal the float64 softmax, on bf16
and fp32 logits, in both builds (AVX-512 and portable C), and the loss gives the same loss
and gradients with them as with torch's passes."""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import accelerated

from rayrec.accel import kernels as native, softmax_rows
from rayrec.accel.dropout import uses_c
from rayrec.accel.losses import FusedCrossEntropy, LinearCrossEntropy

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the loss keeps torch's passes (tested in test_losses)")


def builds():
    """This machine's build, and the portable loops (AVX-512 off) where it has AVX-512."""
    libs = [("native", native.load(native.build(native.FLAGS)) if native.build(native.FLAGS) else None)]
    portable = native.build(native.FLAGS + ("-mno-avx512f",))
    if portable:
        libs.append(("portable", native.load(portable)))
    return libs


@pytest.fixture(scope="module", params=builds(), ids=lambda b: b[0])
def lib(request):
    assert request.param[1] is not None, "a C compiler is on the PATH, so the kernels must build"
    return request.param[1]


def logits(dtype=torch.bfloat16, rows=70, cols=1_013, stride=1_040, seed=0):
    """Rows inside a wider buffer (the loss's padded columns), an odd width (a tail in every
    row), one row with -inf entries, and a wide range of values; fp32 rows come with a bias."""
    g = torch.Generator().manual_seed(seed)
    buf = (torch.randn(rows + 3, stride, generator=g) * 6).to(dtype)
    buf[5, :400] = float("-inf")
    labels = torch.randint(0, cols, (rows,), generator=g)
    labels[5] = 700
    bias = torch.randn(cols, generator=g) if dtype == torch.float32 else None
    return buf, labels, bias


def reference(buf, labels, bias):
    ref = buf[:len(labels), :1_013].double()
    return ref + bias.double() if bias is not None else ref


def rounding(dtype):
    """bf16's rounding of the stored values; in fp32, exp's argument x - max rounded at |x| ~ 80"""
    return 2 ** -8 if dtype == torch.bfloat16 else 1e-5


DTYPES = [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_forward_gives_exact_statistics_and_the_exponentials_in_place(lib, dtype):
    buf, labels, bias = logits(dtype)
    rows, cols = len(labels), 1_013
    before = buf.clone()
    x = buf[:rows, :cols]
    ref = reference(before, labels, bias)
    lse, inv, picked, total = softmax_rows.forward(x, labels, True, bias, lib=lib)
    assert torch.allclose(lse.double(), torch.logsumexp(ref, 1), rtol=0, atol=1e-5)  # fp32 at ~20
    assert torch.allclose(picked.double(), ref.gather(1, labels[:, None]).squeeze(1), rtol=1e-7)
    finite = torch.where(torch.isfinite(ref), ref, 0.0)
    keep = torch.arange(rows) != 5
    assert torch.allclose(total[keep].double(), finite.sum(1)[keep], rtol=1e-5, atol=1e-3)
    e = torch.exp(ref - ref.amax(1, keepdim=True))
    assert torch.allclose(x.double(), e, rtol=rounding(dtype), atol=1e-38)
    assert torch.allclose(inv.double(), 1 / e.sum(1), rtol=1e-5)
    assert torch.equal(buf[:, cols:], before[:, cols:]) and torch.equal(buf[rows:], before[rows:])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_backward_leaves_the_loss_gradient_in_place_and_sums_its_columns(lib, smoothing, dtype):
    buf, labels, bias = logits(dtype)
    rows, cols = len(labels), 1_013
    ref = reference(buf, labels, bias)
    scale = 1 / rows   # the gradient of the mean smoothed cross-entropy, smoothing spread over every column
    want = (torch.softmax(ref, 1) - (1 - smoothing) * F.one_hot(labels, cols) - smoothing / cols) * scale
    if not smoothing:  # the same as torch's (which has no finite answer for -inf logits under smoothing)
        r = ref.clone().requires_grad_()
        F.cross_entropy(r, labels).backward()
        assert torch.allclose(want, r.grad)
    x = buf[:rows, :cols]
    _, inv, _, _ = softmax_rows.forward(x, labels, False, bias, lib=lib)
    sums = softmax_rows.backward(x, labels, inv, scale, smoothing * scale / cols, (1 - smoothing) * scale,
                                 bias_grad=True, lib=lib)
    # within the rounding of the stored exponentials (times scale) and of the result
    bound = rounding(dtype) * (torch.softmax(ref, 1) * scale + want.abs()) + 1e-12
    assert bool(((x.double() - want).abs() <= bound).all())
    p = torch.softmax(ref, 1) * scale
    assert bool(((sums.double() - want.sum(0)).abs() <= rounding(dtype) * (p.sum(0) + want.abs().sum(0)) + 1e-9).all())


def test_the_results_are_the_same_bits_on_one_thread_and_on_two(lib):
    """An exact resume may run on another thread count than the run it resumes."""
    out = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            buf, labels, bias = logits(torch.float32, rows=300)
            x = buf[:300, :1_013]
            lse, inv, picked, _ = softmax_rows.forward(x, labels, False, bias, lib=lib)
            sums = softmax_rows.backward(x, labels, inv, 1 / 300, 0.0, 1 / 300, bias_grad=True, lib=lib)
            out.append((lse, inv, picked, x.clone(), sums))
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*out))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_a_nan_logit_makes_its_row_nan_as_in_torch(lib, dtype):
    """A diverged model must show a NaN loss, not a finite one that skipped the NaN."""
    buf, labels, bias = logits(dtype)
    buf[7, 300] = float("nan")
    lse, inv, _, _ = softmax_rows.forward(buf[:len(labels), :1_013], labels, False, bias, lib=lib)
    assert torch.isnan(lse[7]) and torch.isnan(inv[7])
    assert torch.isfinite(lse[torch.arange(len(labels)) != 7]).all()


def test_a_label_outside_the_columns_is_an_error_not_a_read_past_the_row(lib):
    buf, labels, _ = logits()
    labels[3] = 1_013
    with pytest.raises(IndexError, match="outside the 1013 columns"):
        softmax_rows.forward(buf[:len(labels), :1_013], labels, False, lib=lib)


@pytest.mark.parametrize("mm_dtype", [torch.bfloat16, None], ids=["bf16", "fp32"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_fused_loss_is_the_same_with_the_c_passes_and_with_torchs(monkeypatch, smoothing, mm_dtype):
    assert native.library() is not None
    g = torch.Generator().manual_seed(1)
    n, d, c = 333, 24, 5_003
    h = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(c, d, generator=g) * 0.3).requires_grad_()
    b = (torch.randn(c, generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g)

    def run(use_c):
        loss = LinearCrossEntropy.apply(h, w, b, y, smoothing, mm_dtype, use_c)
        return loss, torch.autograd.grad(loss, (h, w, b))

    with_c = run(True)
    assert not uses_c(accelerated(FusedCrossEntropy(), use_c=False))   # model.accel_kernels: off
    eager = run(False)
    assert torch.allclose(with_c[0], eager[0], rtol=1e-6)
    for a, e in zip(with_c[1], eager[1]):
        assert float((a - e).norm() / e.norm()) < (3e-3 if mm_dtype else 1e-5)


def test_a_fresh_cache_compiles_the_library_and_publishes_it_whole(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = native.build(native.FLAGS)
    assert path is not None and path.startswith(str(tmp_path)) and os.path.getsize(path) > 0
    assert [p.name for p in (tmp_path / "rayrec" / "kernels").iterdir()] == [os.path.basename(path)]  # no temporaries
    lib = native.load(path)
    buf, labels, _ = logits()
    lse, _, _, _ = softmax_rows.forward(buf[:len(labels), :1_013], labels, False, lib=lib)
    assert torch.isfinite(lse).all()


def test_without_a_compiler_there_is_no_library_and_nothing_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert native.build(native.FLAGS) is None
    assert not any((tmp_path / "cache").rglob("*.so"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_sample_walks_each_row_to_its_target_and_never_draws_a_zero_weight(lib, dtype):
    weights = torch.zeros(6, 300, dtype=dtype)
    weights[:, 10], weights[:, 100], weights[:, 250] = 1.0, 2.0, 1.0       # total 4
    targets = torch.tensor([0.5, 1.0, 1.01, 3.0, 3.5, 9.0])               # 9.0: past the total
    drawn = softmax_rows.sample(weights, targets, lib=lib)
    assert drawn.tolist() == [10, 10, 100, 100, 250, 250]
    wide = torch.rand(3, 5_000).to(dtype)                                   # many skipped blocks
    run = wide.float().cumsum(1)
    t = torch.tensor([0.3, 0.6, 0.999]) * run[:, -1]
    want = torch.searchsorted(run, t[:, None]).squeeze(1)
    assert (softmax_rows.sample(wide, t, lib=lib) - want).abs().max() <= 1  # fp32 sums in another order
