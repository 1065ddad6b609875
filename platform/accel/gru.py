"""A GRU over right-padded sessions that computes only the real positions.

torch's GRU runs every sequence for all max_len steps, padding included; sessions average
about 6 events of 20 (yoochoose, rayrec synth), so most of its work is on padding. On CPU
it also runs each step as a matmul plus about ten elementwise ops and their autograd
nodes, which at d_model 192 made the GRU more than half of a training step.

Here the batch is packed time-major (sessions sorted by length, so the sessions still
running at step t are the first n_t rows), and each layer is one autograd function:
- forward: the input projection of every real position in one matmul, then per step the
  recurrence's matmul over the n_t active rows and one pass over its gates (gru.c);
- backward: per step, one pass over the gates and the matmul carrying the gradient to the
  previous step; the weight gradients and the input's are one matmul each over all steps.
The gates and the recurrence are fp32, as torch's CPU GRU under autocast; under autocast
the batched matmuls run in its dtype, as nn.Linear's do. Weights are the nn.GRU's, so
checkpoints and the torch path are interchangeable; tests/test_gru_fast.py holds the two
equal on the real positions, values and gradients. Without the C kernels the gates are
torch ops (the packing and the batched matmuls still apply).
"""
from __future__ import annotations

import torch
from torch import nn

from rayrec.accel import kernels, unpad
from rayrec.accel.dropout import fast_dropout, uses_c
from rayrec.models.batch import right_padded
from rayrec.models.bodies import RNNBody


def applies(rnn: nn.Module, x: torch.Tensor) -> bool:
    """On CPU, in eager mode (an export traces torch's own GRU), unless model.accel_unpad is off."""
    return (unpad.unpads(rnn) and isinstance(rnn, nn.GRU) and x.device.type == "cpu" and rnn.batch_first and rnn.bias
            and not rnn.bidirectional and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())


def packing(attend: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
    """(flat [B*L] index of each real position, time-major; [(offset, rows)] per step), or
    None when `attend` is not a prefix in every row (then padding sits between events)."""
    if not right_padded(attend):
        return None
    L, lengths = attend.shape[1], attend.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    running = torch.arange(L)[:, None] < lengths[order][None, :]  # [L, B] in sorted order
    index = (order[None, :] * L + torch.arange(L)[:, None])[running]
    counts = running.sum(1).tolist()
    steps, offset = [], 0
    for n in counts:
        if n == 0:
            break
        steps.append((offset, n))
        offset += n
    return index, steps


def _forward_torch(gi, gh, h_prev, h, gates):
    d = h.shape[1]
    rz = torch.sigmoid(gi[:, :2 * d] + gh[:, :2 * d])
    r, z = rz[:, :d], rz[:, d:]
    c = torch.tanh(gi[:, 2 * d:] + r * gh[:, 2 * d:])
    torch.lerp(c, h_prev, z, out=h) if h_prev is not None else torch.mul(c, 1 - z, out=h)
    if gates is not None:
        gates[:, :2 * d], gates[:, 2 * d:] = rz, c


def _backward_torch(dout, carry, gates, gh, h_prev, dgi, dgh):
    d = carry.shape[1]
    r, z, c = gates[:, :d], gates[:, d:2 * d], gates[:, 2 * d:]
    dh = carry + dout
    dc = dh * (1 - z) * (1 - c * c)
    dgi[:, :d] = dc * gh[:, 2 * d:] * r * (1 - r)
    dgi[:, d:2 * d] = dh * ((h_prev if h_prev is not None else 0) - c) * z * (1 - z)
    dgi[:, 2 * d:] = dc
    dgh[:, :2 * d] = dgi[:, :2 * d]
    dgh[:, 2 * d:] = dc * r
    carry.copy_(dh * z)


def _step_forward(gi, gh, h_prev, h, gates, lib):
    if lib is None:
        return _forward_torch(gi, gh, h_prev, h, gates)
    lib.gru_step_forward(h.shape[0], h.shape[1], gi.data_ptr(), gh.data_ptr(),
                         None if h_prev is None else h_prev.data_ptr(), h.data_ptr(),
                         None if gates is None else gates.data_ptr(), torch.get_num_threads())


def _step_backward(dout, carry, gates, gh, h_prev, dgi, dgh, lib):
    if lib is None:
        return _backward_torch(dout, carry, gates, gh, h_prev, dgi, dgh)
    lib.gru_step_backward(carry.shape[0], carry.shape[1], dout.data_ptr(), carry.data_ptr(), gates.data_ptr(),
                          gh.data_ptr(), None if h_prev is None else h_prev.data_ptr(), dgi.data_ptr(),
                          dgh.data_ptr(), torch.get_num_threads())


def _mm(a: torch.Tensor, b: torch.Tensor, low: torch.dtype | None) -> torch.Tensor:
    """a @ b in fp32, or in autocast's dtype when the caller ran under autocast (as an
    nn.Linear would); the per-step recurrence stays fp32, its error compounding over steps."""
    if low is None:
        return a @ b
    return (a.to(low) @ b.to(low)).float()


class GRULayer(torch.autograd.Function):
    """One layer over packed rows [N', d_in] -> [N', d]; `steps` (offset, rows) per time step
    cover the first N rows, the rest are zeros that keep the matmuls' shapes few (see gru)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx, data, w_ih, w_hh, b_ih, b_hh, steps, saving, low, use_c):
        lib = kernels.library() if use_c else None
        d, rows_all = w_hh.shape[1], data.shape[0]
        gi = _mm(data, w_ih.t(), low).add_(b_ih)
        out, gh = data.new_zeros(rows_all, d), data.new_empty(rows_all, 3 * d)
        h_prev = data.new_zeros(rows_all, d)   # row-aligned with out: each row's state before its step
        gates = data.new_empty(rows_all, 3 * d) if saving else None
        prev = None
        for off, n in steps:
            rows = slice(off, off + n)
            if prev is None:
                gh[rows] = b_hh
            else:
                h_prev[rows] = out[prev:prev + n]
                torch.addmm(b_hh, h_prev[rows], w_hh.t(), out=gh[rows])
            _step_forward(gi[rows], gh[rows], None if prev is None else h_prev[rows], out[rows],
                          None if gates is None else gates[rows], lib)
            prev = off
        ctx.steps, ctx.lib, ctx.low = steps, lib, low
        ctx.save_for_backward(data, w_ih, w_hh, h_prev, gh, gates)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dout):
        data, w_ih, w_hh, h_prev, gh, gates = ctx.saved_tensors
        steps, lib, low = ctx.steps, ctx.lib, ctx.low
        dout = dout.float().contiguous()
        rows_all, d = h_prev.shape
        used = steps[-1][0] + steps[-1][1]
        dgi, dgh = h_prev.new_empty(rows_all, 3 * d), h_prev.new_empty(rows_all, 3 * d)
        dgi[used:], dgh[used:] = 0, 0
        carry = h_prev.new_zeros(steps[0][1], d)
        for t in range(len(steps) - 1, -1, -1):
            off, n = steps[t]
            rows = slice(off, off + n)
            _step_backward(dout[rows], carry[:n], gates[rows], gh[rows], h_prev[rows] if t else None,
                           dgi[rows], dgh[rows], lib)
            if t:
                carry[:n].addmm_(dgh[rows], w_hh)
        # h_prev is zero in step 0 and past the used rows: no terms in W_hh's gradient there
        dx = _mm(dgi, w_ih, low) if ctx.needs_input_grad[0] else None
        return (dx, _mm(dgi.t(), data, low), _mm(dgh.t(), h_prev, low), dgi[:used].sum(0), dgh[:used].sum(0),
                None, None, None, None)


def gru(rnn: nn.GRU, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor | None:
    """rnn(x)[0] at every real position (zeros at padding), or None when `attend` is not a
    prefix of each row (the caller then runs rnn itself)."""
    packed = packing(attend)
    if packed is None:
        return None
    index, steps = packed
    B, L, d_in = x.shape
    if not steps:   # no session has an event
        return x.new_zeros(B, L, rnn.hidden_size, dtype=torch.float32)
    saving = torch.is_grad_enabled()   # else no gates are kept for a backward
    use_c = uses_c(rnn)
    low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    N = len(index)   # rounded up with zero rows under bf16, as unpad's rows are
    data = unpad.pad_rows(x.reshape(B * L, d_in).index_select(0, index), unpad.rounded(N))
    for k in range(rnn.num_layers):
        if k:
            data = fast_dropout(data, rnn.dropout, rnn.training, use_c)
        data = GRULayer.apply(data, getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}"),
                              getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}"), steps, saving, low, use_c)
    return data.new_zeros(B * L, rnn.hidden_size).index_copy(0, index, data[:N]).view(B, L, -1)


class FastRNNBody(RNNBody):
    """RNNBody whose GRU runs only the real positions, where it applies."""

    def forward(self, x: torch.Tensor, attend: torch.Tensor, perm_mask: torch.Tensor | None = None) -> torch.Tensor:
        if applies(self.rnn, x):
            out = gru(self.rnn, x, attend)
            if out is not None:
                return out
        return self.rnn(x)[0]
