"""Learning-rate multipliers for :class:`torch.optim.lr_scheduler.LambdaLR`.

Convention (as in the GaLore and ReLoRA scripts and ``transformers``): the multiplier is a
function of the scheduler's step index ``t``, which is 0 for the first optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..methods.base import TrainingMethod


def _check(total_steps: int, warmup_steps: int, min_lr_ratio: float) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")


def warmup_cosine_lambda(total_steps: int, warmup_steps: int,
                         min_lr_ratio: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``."""
    _check(total_steps, warmup_steps, min_lr_ratio)

    def multiplier(t: int) -> float:
        if t < warmup_steps:
            return t / warmup_steps
        progress = min(1.0, (t - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def method_lr_lambda(method: TrainingMethod, total_steps: int, warmup_steps: int,
                     min_lr_ratio: float = 0.1) -> Callable[[int], float]:
    """The multiplier a method trains with: the warm-up cosine times its restart factor.

    ``warmup_cosine_lambda(...)(t) * method.restart_factor(t)``. The factor is exactly 1.0
    for methods without learning-rate re-warm-ups, so their schedule is the envelope bit for
    bit; with re-warm-ups this is :func:`jagged_cosine_lambda` up to the last bit (it
    computes ``envelope * (since / rewarm)`` where that one computes ``envelope * since /
    rewarm``).

    Args:
        method: a :class:`~sparse_spectral.methods.TrainingMethod`.
        total_steps, warmup_steps, min_lr_ratio: the envelope's (see
            :func:`warmup_cosine_lambda`).
    """
    envelope = warmup_cosine_lambda(total_steps, warmup_steps, min_lr_ratio)

    def multiplier(t: int) -> float:
        return envelope(t) * method.restart_factor(t)

    return multiplier


def jagged_cosine_lambda(total_steps: int, warmup_steps: int, min_lr_ratio: float,
                         cycle_length: int, restart_warmup_steps: int) -> Callable[[int], float]:
    """ReLoRA's "jagged cosine": the warm-up cosine, re-warmed after every restart.

    After each restart (step indices that are positive multiples of ``cycle_length``) the
    multiplier ramps linearly from 0 back to the cosine envelope over
    ``restart_warmup_steps``. (The original ReLoRA ramps to the envelope's value at the end
    of the ramp; ramping under the envelope differs by at most one ramp's worth of decay.)
    """
    if cycle_length < 1 or restart_warmup_steps < 0:
        raise ValueError(f"cycle_length={cycle_length} must be >= 1 and "
                         f"restart_warmup_steps={restart_warmup_steps} >= 0")
    envelope = warmup_cosine_lambda(total_steps, warmup_steps, min_lr_ratio)

    def multiplier(t: int) -> float:
        since_restart = t % cycle_length
        if t >= cycle_length and since_restart < restart_warmup_steps:
            return envelope(t) * since_restart / restart_warmup_steps
        return envelope(t)

    return multiplier
