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
