"""Sparse spectral inference: keep only the largest singular triplets of each layer (SPEC 6)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..linear import is_linear, linear_weight
from ..targeting import find_target_modules, replace_module
from .layer import SpectralLinear, thin_svd
from .lowrank import LowRankLinear


def kept_triplets(k: int, ratio: float) -> int:
    """``ceil((1 - ratio) k)``: triplets kept at pruning ratio ``ratio``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"pruning ratio={ratio!r} must be a number in [0, 1]")
    # Round away float noise first so that e.g. (1 - 0.7) * 10 keeps 3, not 4.
    return math.ceil(round((1.0 - ratio) * k, 9))


def _dense_weight(module: nn.Module) -> torch.Tensor:
    if isinstance(module, SpectralLinear):
        return module.dense_weight(torch.float32)
    return linear_weight(module).detach().float()


@torch.no_grad()
def prune_layer(module: nn.Module, ratio: float) -> LowRankLinear:
    """Truncate one linear layer (dense or :class:`SpectralLinear`) to its top triplets.

    The SVD is taken of the layer's current dense weight in float32, so an SST layer whose
    factors drifted from orthogonality since its last re-SVD is truncated exactly.

    Returns:
        A :class:`LowRankLinear` with ``A = diag(s_q) Vh_q`` (q, n) and ``B = U_q`` (m, q).
    """
    weight = _dense_weight(module)
    U, s, Vh = thin_svd(weight)
    q = kept_triplets(s.numel(), ratio)
    # An SST layer's training dtype is that of s (its frozen factors may be stored lower).
    dtype = module.s.dtype if isinstance(module, SpectralLinear) else linear_weight(module).dtype
    A = (s[:q, None] * Vh[:q]).to(dtype)
    B = U[:, :q].to(dtype)
    return LowRankLinear(A, B, module.bias)


def prune_spectrum(model: nn.Module, ratio: float, target_modules="all-linear",
                   exclude_modules=None) -> nn.Module:
    """A copy of ``model`` whose target layers keep the top ``ceil((1 - ratio) k)`` triplets.

    SST layers are always targets; in a dense model the targets follow ``target_modules``
    (peft semantics), so the full-rank baseline is pruned the same way.
    """
    kept_triplets(1, ratio)  # validate before copying a large model
    pruned = copy.deepcopy(model)
    spectral = [(n, m) for n, m in pruned.named_modules() if isinstance(m, SpectralLinear)]
    targets = spectral or [(n, m) for n, m in
                           find_target_modules(pruned, target_modules, exclude_modules)
                           if is_linear(m)]
    for name, module in targets:
        replace_module(pruned, name, prune_layer(module, ratio))
    return pruned
