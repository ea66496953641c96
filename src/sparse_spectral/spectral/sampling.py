"""Choosing which r singular-vector pairs train during an iteration.

Every sampler is a pure function of ``(s, r, key)``: randomness comes from a fresh CPU
generator seeded from a counter key ``(run seed, layer index, iteration index)``, so there
is no generator state to checkpoint, a resumed run draws exactly the indices of an
uninterrupted one, and every DDP rank draws the same ones (SPEC section 9).
"""

from __future__ import annotations

import math

import torch

from .._util.seeding import counter_seed

SAMPLERS = ("weighted", "uniform", "sequential", "top-r")

def sampling_probabilities(s: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
    """``p_i = (1 - lam) s_i / sum(s) + lam / k`` in float64 on the CPU.

    Args:
        s: singular values, shape ``(k,)``, non-negative.
        lam: uniform mix in ``[0, 1]``.

    Returns:
        Probabilities of shape ``(k,)``; uniform where ``sum(s) == 0``.
    """
    s = s.detach().to("cpu", torch.float64).clamp_min(0.0)
    k = s.numel()
    total = s.sum()
    weighted = s / total if total > 0 else torch.full_like(s, 1.0 / k)
    return (1.0 - lam) * weighted + lam / k


def _weighted(s: torch.Tensor, r: int, lam: float, gen: torch.Generator) -> torch.Tensor:
    p = sampling_probabilities(s, lam)
    positive = int((p > 0).sum())
    if positive >= r:
        return torch.multinomial(p, r, replacement=False, generator=gen)
    # Fewer than r vectors have weight (e.g. singular values clamped to zero): take all of
    # them and fill the rest uniformly from the zero-weight ones.
    chosen = torch.nonzero(p > 0).flatten()
    rest = torch.nonzero(p == 0).flatten()
    fill = rest[torch.randperm(rest.numel(), generator=gen)[: r - positive]]
    return torch.cat([chosen, fill])


def select_indices(
    sampler: str,
    s: torch.Tensor,
    r: int,
    *,
    key: tuple[int, ...],
    lam: float = 0.0,
    iteration_in_round: int = 0,
) -> torch.Tensor:
    """Draw the active set for one iteration.

    Args:
        sampler: one of :data:`SAMPLERS`.
        s: singular values, shape ``(k,)``.
        r: number of pairs to select, ``1 <= r <= k``.
        key: integers seeding this draw (run seed, layer index, iteration index).
        lam: uniform mix for the ``weighted`` sampler.
        iteration_in_round: position inside the round, for the ``sequential`` sampler.

    Returns:
        ``r`` distinct indices, sorted ascending, int64 on the CPU.
    """
    k = s.numel()
    if not 1 <= r <= k:
        raise ValueError(f"rank r={r} must satisfy 1 <= r <= k={k}")
    if sampler == "weighted":
        gen = torch.Generator().manual_seed(counter_seed(*key))
        idx = _weighted(s, r, lam, gen)
    elif sampler == "uniform":
        gen = torch.Generator().manual_seed(counter_seed(*key))
        idx = torch.randperm(k, generator=gen)[:r]
    elif sampler == "sequential":
        # Cyclic windows: iterations 0 .. ceil(k / r) - 1 of a round cover every index.
        start = (iteration_in_round * r) % k
        idx = (start + torch.arange(r)) % k
    elif sampler == "top-r":
        # Stable sort so ties resolve to the lower index, deterministically.
        idx = torch.sort(s.detach().cpu(), descending=True, stable=True).indices[:r]
    else:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    return torch.sort(idx.to(torch.int64)).values


def iterations_per_round(k: int, r: int) -> int:
    """Default T2: enough iterations for a round to visit every vector once."""
    return math.ceil(k / r)
