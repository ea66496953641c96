"""``LowRankLinear``: ``y = B (A x) + b``, the storage of a spectrally pruned layer."""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """A rank-q linear map stored as two factors.

    Args:
        A: ``(q, n)`` right factor (``diag(s_q) Vh_q`` after pruning).
        B: ``(m, q)`` left factor (``U_q``).
        bias: optional ``(m,)``.
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if A.shape[0] != B.shape[1]:
            raise ValueError(f"A {tuple(A.shape)} and B {tuple(B.shape)} disagree on the rank")
        self.in_features, self.out_features, self.rank = A.shape[1], B.shape[0], A.shape[0]
        self.A = nn.Parameter(A.detach().clone())
        self.B = nn.Parameter(B.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        y = (x @ self.A.t()) @ self.B.t()
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
