"""``full``: ordinary full-rank training, the reference every method is compared with."""

from __future__ import annotations

from .base import MethodConfig, TrainingMethod, register_method


@register_method
class FullRank(TrainingMethod):
    """Every weight trains; nothing is replaced."""

    name = "full"
    config_class = MethodConfig
