"""``full``: ordinary full-rank training, the reference every method is compared with."""

from __future__ import annotations

from torch import nn

from ..targeting import find_target_modules
from .base import MethodConfig, TrainingMethod, register_method


@register_method
class FullRank(TrainingMethod):
    """Every weight trains; nothing is replaced."""

    name = "full"
    config_class = MethodConfig
    draws_pruning_curve = True

    def prepare(self, model: nn.Module) -> nn.Module:
        """Return ``model`` unchanged.

        The targets are still resolved, so that a run switched from another method by name
        fails on the same bad ``target_modules`` instead of silently ignoring them.
        """
        find_target_modules(model, self.config.target_modules, self.config.exclude_modules)
        return model
