"""The C kernels take work dynamically (schedule.h), so that a thread descheduled for another
process holds back one item rather than a fixed share. Each item is computed whole by one
thread, so the dynamic build must give the bits of the former static build, on any number
of threads: both are compiled here from the same sources and run on the same inputs."""
import ctypes

import pytest
import torch

from rayrec.accel import kernels


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if kernels.compiler() is None:
        pytest.skip("no C compiler on this machine")
    cache = tmp_path_factory.mktemp("kernels")
    with pytest.MonkeyPatch.context() as mp:      # this module's own cache: compiled fresh from the sources
        mp.setenv("XDG_CACHE_HOME", str(cache))
        dynamic = kernels.load(kernels.compile_library())
        static = kernels.load(kernels.compile_library(kernels.FLAGS + ("-DRAYREC_STATIC_SCHEDULE",)))
    assert dynamic is not None and static is not None
    return {"static": static, "dynamic": dynamic}


def ptr(t: torch.Tensor):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def run_all(lib, threads: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Every kernel on fixed inputs: softmax rows forward/backward (with a bias and its
    per-chunk column sums, and without), the categorical draw, dropout, a GRU step."""
    g = torch.Generator().manual_seed(0)
    outs = []
    for n, c in ((1000, 300), (64, 20_000)):      # many rows per work item; one row per item
        x = (torch.randn(n, c, generator=g) * 3).to(dtype)
        labels = torch.randint(0, c, (n,), generator=g)
        bias = torch.randn(c, generator=g)
        lse, inv, picked, total = (torch.empty(n) for _ in range(4))
        lib.softmax_rows_forward(n, ptr(x), int(dtype == torch.bfloat16), c, c, ptr(bias), ptr(labels), ptr(lse),
                                 ptr(inv), ptr(picked), ptr(total), threads)
        drawn = torch.empty(n, dtype=torch.int64)
        target = torch.rand(n, generator=g) * x.float().sum(1)      # in (0, row total] of the weights
        lib.sample_rows(n, ptr(x), int(dtype == torch.bfloat16), c, c, ptr(target), ptr(drawn), threads)
        grads = x.clone()
        colsum = torch.zeros((-(-n // 128), c))
        lib.softmax_rows_backward(n, ptr(grads), int(dtype == torch.bfloat16), c, c, ptr(labels), ptr(inv),
                                  0.5, 0.001, 0.9, ptr(colsum), 128, threads)
        plain = x.clone()
        lib.softmax_rows_backward(n, ptr(plain), int(dtype == torch.bfloat16), c, c, ptr(labels), ptr(inv),
                                  0.5, 0.001, 0.9, None, 128, threads)
        outs += [x, lse, inv, picked, total, drawn, grads, colsum, plain]
    x = torch.randn(300_001, generator=g).to(dtype)
    dropped = torch.empty_like(x)
    lib.dropout_apply(x.numel(), ptr(x), ptr(dropped), int(dtype == torch.bfloat16), 1234, round(0.3 * 65536),
                      1 / 0.7, threads)
    outs.append(dropped)
    n, d = 512, 64                                 # n * d above the kernels' parallel threshold
    gi, gh, h_prev = torch.randn(n, 3 * d, generator=g), torch.randn(n, 3 * d, generator=g), torch.randn(n, d, generator=g)
    h, gates = torch.empty(n, d), torch.empty(n, 3 * d)
    lib.gru_step_forward(n, d, ptr(gi), ptr(gh), ptr(h_prev), ptr(h), ptr(gates), threads)
    dout, carry = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    dgi, dgh = torch.empty(n, 3 * d), torch.empty(n, 3 * d)
    lib.gru_step_backward(n, d, ptr(dout), ptr(carry), ptr(gates), ptr(gh), ptr(h_prev), ptr(dgi), ptr(dgh), threads)
    return outs + [h, gates, carry, dgi, dgh]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_dynamic_schedule_gives_the_static_bits_on_any_thread_count(builds, dtype):
    want = run_all(builds["static"], 2, dtype)
    for threads in (1, 2, 3):
        for name, lib in builds.items():
            got = run_all(lib, threads, dtype)
            assert len(got) == len(want)
            for i, (a, b) in enumerate(zip(got, want)):
                assert torch.equal(a, b), f"{name} build, {threads} threads: output {i} differs"
