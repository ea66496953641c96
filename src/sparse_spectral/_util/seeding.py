"""Counter-based seeds: a random stream keyed by integers, with no generator state to save.

Samplers, data order and initialisations seed a fresh generator from ``counter_seed(run seed,
layer, iteration, ...)``, so a resumed run (or another DDP rank) draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def counter_seed(*key: int) -> int:
    """Mix integer counters into one 63-bit seed (stable across Python runs and platforms)."""
    h = 0
    for part in key:
        h = _splitmix64(h ^ (int(part) & _MASK64))
    return h & ((1 << 63) - 1)


#: Stream key of the process-global generators (dropout), apart from the model
#: initialisations, which seed their own generators with the run seed itself.
GLOBAL_STREAM = 0x5EED


def seed_global_rngs(seed: int, rank: int = 0) -> int:
    """Seed every process-global generator a run draws from: torch's CPU and CUDA ones
    (dropout masks, ``torch.rand`` without a generator), numpy's and Python's.

    A run calls this once, after building its model and before the first step, so two runs
    with the same seed draw the same dropout masks. ``rank`` keys a stream per process,
    ``counter_seed(seed, GLOBAL_STREAM, rank)`` (rank 0's is a single-process run's); the
    engine passes 0 on every rank for now, so DDP ranks draw the same masks, because a
    checkpoint saves rank 0's generator state only (docs/reliability.md).

    Returns:
        The seed given to the generators (numpy's and Python's take it modulo ``2**32``).
    """
    import random

    import numpy as np
    import torch

    value = counter_seed(seed, GLOBAL_STREAM, rank)
    torch.manual_seed(value)  # also every CUDA device's generator
    np.random.seed(value % 2**32)
    random.seed(value)
    return value
