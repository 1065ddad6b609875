"""ELECTRA's proposals drawn by two C passes over the generator's logits (softmax_rows.c):
one makes each row's exponentials in place, the second walks them to the draw. The plain
ProposalSampler's softmax and [N, C] cumulative sum were a fifth of an ELECTRA-rtd CPU step.
"""
from __future__ import annotations

import torch

from rayrec.accel import kernels, softmax_rows
from rayrec.accel.dropout import uses_c
from rayrec.models.masking import ProposalSampler


class FastProposalSampler(ProposalSampler):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if (uses_c(self) and kernels.library() is not None and softmax_rows.supports(logits) and logits.dim() == 2
                and len(logits)):
            x = logits if logits.stride(1) == 1 else logits.contiguous()
            _, inv, _, _ = softmax_rows.forward(x, torch.zeros(len(x), dtype=torch.int64), False)
            return softmax_rows.sample(x, (1.0 - torch.rand(len(x))) / inv)  # a target in (0, row total]
        return super().forward(logits)
