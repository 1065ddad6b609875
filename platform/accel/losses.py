"""Cross-entropy over the catalogue, lean in memory passes: accel's replacement for
models.losses.CatalogueCrossEntropy (the plain one makes the logits and calls torch).

The [targets, catalogue] logits are a training step's largest tensor (484 x 20,000 fp32 =
39 MB on the reference config), so every pass over them costs about as much as a small
matmul. Both functions here make the forward's softmax statistics in cache-sized blocks
of rows, and leave exp(x - rowmax) in the logits' own memory: the backward then scales it
into softmax - target in a single pass. `linear_cross_entropy` also writes each block of
logits with its bias in cache, so the full softmax never runs a bias copy or a separate
max/sub/exp pass over the whole buffer.

The logits buffer is overwritten: it must be a fresh tensor that only the loss reads (the
output layer's matmul output is; that matmul's backward does not need it).
"""
from __future__ import annotations

import torch

from rayrec.accel import kernels, softmax_rows
from rayrec.accel.dropout import uses_c
from rayrec.models import losses as plain
from rayrec.models.losses import ROW_QUANTUM, CatalogueCrossEntropy, padded

BLOCK_BYTES = 4 << 20  # blocks of logits rows small enough to stay in cache (measured: 4 MB beat 1 MB)
# bf16: the inner dim (d + 1) and the catalogue are zero-padded to these for AMX's tiles;
# an odd inner dim (65) or catalogue (19,807) measured 4-18% slower over the loss's three matmuls
K_QUANTUM = 32
COL_QUANTUM = 64


def block_rows(width: int) -> int:
    return max(8, BLOCK_BYTES // (4 * max(width, 1)))


def exp_in_place(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows -> exp(x - rowmax) in place; returns (logsumexp, 1 / sum) per row."""
    m = block.amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = block.sub_(m).exp_().sum(1)
    return m.squeeze(1) + s.log(), s.reciprocal()


class LogitsCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of given [N, C] logits; smoothing spread over finite columns."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        picked = logits.gather(1, labels[:, None]).squeeze(1)
        finite = count = mean_logit = None
        if smoothing:
            finite = torch.isfinite(logits)
            count = finite.sum(1)
            mean_logit = torch.where(finite, logits, 0.0).sum(1) / count
        stats = [exp_in_place(b) for b in logits.split(block_rows(logits.shape[1]))]
        lse, inv = torch.cat([s[0] for s in stats]), torch.cat([s[1] for s in stats])
        ctx.buffer, ctx.smoothing, ctx.finite = logits, smoothing, finite
        ctx.save_for_backward(inv, labels, count if count is not None else inv)
        return mean_loss(lse, picked, smoothing, mean_logit)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inv, labels, count = ctx.saved_tensors
        scale = grad / len(labels)
        spread = ctx.finite * (ctx.smoothing * scale / count)[:, None] if ctx.smoothing else None
        g = softmax_minus_target(ctx.buffer, inv, labels, scale, ctx.smoothing, spread)
        ctx.buffer = ctx.finite = None
        return g, None, None


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of h @ w.T + b, the logits made and reduced block by block.

    With `mm_dtype` (bf16) the matmuls run in it and the bias rides in them as one more
    column ([h, 1] @ [w, b].T), so no pass adds it and the second backward matmul's last
    column is its gradient. The logits buffer is bf16 too: each block of rows is widened
    to fp32 in cache for the statistics and the gradient, then narrowed back. That halves
    the buffer's memory traffic, the step's largest, at the precision autocast's own
    bf16 matmuls give (measured: gradients within 3e-3 relative of float64, loss 3e-6).

    On CPU, the row passes (bf16 or fp32) run in C where the machine has a compiler
    (softmax_rows.py, native.py): one read and one write of each row, forward and backward.

    The rows (the batch's predicted positions) change in number every step, and oneDNN
    builds a new bf16 kernel for each new matmul shape: 15-80 ms for the backward's [rows
    x catalogue] @ [catalogue x d] against 2.5 ms for a shape it has seen. So in bf16 the
    matmuls run on rows padded with zeros to a multiple of ROW_QUANTUM, whose logits and
    gradient rows are zero and take no part in the loss (fp32 matmuls have no such cost:
    padding them measured slower)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                smoothing: float, mm_dtype: torch.dtype | None = None, use_c: bool = True) -> torch.Tensor:
        (n, d), c = h.shape, len(w)
        ctx.dtypes, ctx.shape, ctx.folded = (h.dtype, w.dtype, b.dtype), (c, d), mm_dtype is not None
        if mm_dtype is None:
            hm, wm = h, w
        else:
            hm = h.new_zeros((padded(n, ROW_QUANTUM), padded(d + 1, K_QUANTUM)), dtype=mm_dtype)
            hm[:n, :d], hm[:n, d] = h, 1
            wm = w.new_zeros((padded(c, COL_QUANTUM), hm.shape[1]), dtype=mm_dtype)
            wm[:c, :d], wm[:c, d] = w, b
        full = hm @ wm.t()  # one matmul: row blocks of it would each re-read all of w
        ctx.smoothing = smoothing
        ctx.native = use_c and softmax_rows.supports(full) and kernels.library() is not None
        labels = labels.contiguous()
        bias = None if ctx.folded else b.contiguous()
        passes = softmax_rows.forward if ctx.native else blockwise_forward  # C: each row read and written once
        lse, inv, picked, total = passes(full[:n, :c], labels, bool(smoothing), bias)
        ctx.buffer = full
        ctx.save_for_backward(hm, wm, inv, labels)
        return mean_loss(lse, picked, smoothing, total / c if smoothing else None)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w, inv, labels = ctx.saved_tensors
        n, (c, d) = len(labels), ctx.shape
        scale = grad / n
        buffer, ctx.buffer = ctx.buffer, None  # bf16: [padded rows, padded c], zero past n and c
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        folded = ctx.folded  # bf16: the bias is w's last column
        spread, logits = ctx.smoothing * scale / c, buffer[:n, :c]
        if ctx.native:
            gb = softmax_rows.backward(logits, labels, inv, float(scale), float(spread),
                                       float((1 - ctx.smoothing) * scale), bias_grad=need_b and not folded)
        else:
            gb = blockwise_backward(logits, labels, inv, scale, ctx.smoothing, spread, bias_grad=need_b and not folded)
        h_dtype, w_dtype, b_dtype = ctx.dtypes
        gh = (buffer @ w)[:n, :d] if need_h else None
        gw = (buffer.t() @ h)[:c] if need_w or (need_b and folded) else None
        if folded:
            gb = gw[:, d].to(b_dtype) if need_b else None
            gw = gw[:, :d] if need_w else None
        return (gh.to(h_dtype) if gh is not None else None, gw.to(w_dtype) if gw is not None else None, gb,
                None, None, None, None)


def blockwise_forward(logits: torch.Tensor, labels: torch.Tensor, with_total: bool, bias: torch.Tensor | None):
    """softmax_rows.forward's results in torch passes, block by block in cache: bf16 blocks
    are widened to fp32 and narrowed back; others get their bias added in place."""
    rows, wide = block_rows(logits.shape[1]), _wide(logits)
    picked, total, stats = [], [], []
    for part, y in zip(logits.split(rows), labels.split(rows)):
        block = (part.add_(bias) if bias is not None else part) if wide is None else wide[:len(part)].copy_(part)
        picked.append(block.gather(1, y[:, None]).squeeze(1))
        if with_total:
            total.append(block.sum(1))
        stats.append(exp_in_place(block))
        if block is not part:
            part.copy_(block)
    lse, inv = torch.cat([s[0] for s in stats]), torch.cat([s[1] for s in stats])
    return lse, inv, torch.cat(picked), torch.cat(total) if with_total else None


def blockwise_backward(x: torch.Tensor, labels: torch.Tensor, inv: torch.Tensor, scale: torch.Tensor,
                       smoothing: float, spread, bias_grad: bool) -> torch.Tensor | None:
    """softmax_rows.backward in torch passes (no host sync), block by block in cache."""
    rows, wide = block_rows(x.shape[1]), _wide(x)
    gb = torch.zeros(x.shape[1], dtype=x.dtype if wide is None else torch.float32, device=x.device) \
        if bias_grad else None
    for start in range(0, len(x), rows):
        part = x[start:start + rows]
        block = part if wide is None else wide[:len(part)].copy_(part)
        g = softmax_minus_target(block, inv[start:start + rows], labels[start:start + rows], scale, smoothing, spread)
        if gb is not None:
            gb.add_(g.sum(0))
        if block is not part:
            part.copy_(g)
    return gb


def _wide(x: torch.Tensor) -> torch.Tensor | None:
    """bf16 logits: an fp32 block to widen rows into (the arithmetic stays fp32)."""
    if x.dtype != torch.bfloat16:
        return None
    return x.new_empty((min(block_rows(x.shape[1]), len(x)), x.shape[1]), dtype=torch.float32)


def softmax_minus_target(numerators: torch.Tensor, inv: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
                         smoothing: float, spread) -> torch.Tensor:
    """The loss gradient, in the buffer of exp(x - rowmax): scale * (softmax - smoothed
    target), where `spread` is the smoothing mass per column, already times scale."""
    g = numerators.mul_((inv * scale)[:, None])
    if smoothing:
        g.sub_(spread)
    g[torch.arange(len(labels), device=g.device), labels] -= (1 - smoothing) * scale
    return g


def mean_loss(lse, picked, smoothing: float, mean_logit) -> torch.Tensor:
    loss = lse - picked
    if smoothing:
        loss = (1 - smoothing) * loss + smoothing * (lse - mean_logit)
    return loss.mean()


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                         smoothing: float, use_c: bool = True) -> torch.Tensor:
    """cross-entropy(h @ w.T + b, labels), fused when training. Under bf16 autocast (or
    with bf16 inputs) the matmuls run in bf16 with fp32 accumulation, as autocast would
    run them, and the softmax statistics are made in fp32 (LinearCrossEntropy)."""
    device = h.device.type
    autocast = torch.is_autocast_enabled(device)
    low = (autocast and torch.get_autocast_dtype(device) == torch.bfloat16) or torch.bfloat16 in (h.dtype, w.dtype)
    floats = {h.dtype, w.dtype, b.dtype} <= {torch.float32, torch.bfloat16}
    fused = (torch.is_grad_enabled() and floats and (h.requires_grad or w.requires_grad)
             and (low or not autocast))
    if fused:
        with torch.autocast(device, enabled=False):
            return LinearCrossEntropy.apply(h, w, b.float(), labels, smoothing, torch.bfloat16 if low else None,
                                            use_c)
    return smoothed_cross_entropy(torch.nn.functional.linear(h, w, b), labels, smoothing)


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """models.losses' smoothed cross-entropy, its training pass over the logits' own buffer."""
    if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the softmax statistics in fp32
        logits = logits.float()
    if logits.requires_grad and logits.grad_fn is not None:
        return LogitsCrossEntropy.apply(logits, labels, smoothing)
    return plain.smoothed_cross_entropy(logits, labels, smoothing)


class FusedCrossEntropy(CatalogueCrossEntropy):
    """CatalogueCrossEntropy with the logits made and reduced block by block (above)."""

    def forward(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, labels: torch.Tensor,
                smoothing: float) -> torch.Tensor:
        return linear_cross_entropy(h, w, b, labels, smoothing, uses_c(self))

    def of_logits(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        return smoothed_cross_entropy(logits, labels, smoothing)
