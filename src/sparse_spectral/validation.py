"""Small shared checks for settings, each raising an error that names the bad value."""

from __future__ import annotations

from torch import nn

from .targeting import linear_shape


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_rank_fits(name: str, module: nn.Module, rank: int) -> None:
    """Raise unless ``1 <= rank <= min(m, n)`` for the linear layer ``name``."""
    m, n = linear_shape(module)
    if rank > min(m, n):
        raise ValueError(f"rank={rank} is out of range for layer {name!r} of shape "
                         f"(m={m}, n={n}): it must be in [1, min(m, n) = {min(m, n)}]")
