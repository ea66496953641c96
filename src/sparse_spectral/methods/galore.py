"""``galore``: GaLore, full-rank weights trained by Adam in a projected gradient space.

The baseline of SPEC section 5 (Zhao et al. 2024, "Gradient Low-Rank Projection"). Nothing in
the model is replaced: the target layers' weights go into one param group that
:class:`~sparse_spectral.methods.galore_optim.GaLoreAdamW` steps in a rank-r subspace of
their gradients, refreshed from an SVD every ``update_proj_gap`` steps; every other
trainable parameter gets plain AdamW. Why the published ``galore-torch`` package is not
used (its optimizer state is not ``weights_only``-loadable) is in ``galore_optim``.

GPT-2's ``Conv1D`` stores its weight as (in, out); the group marks such weights
``transposed`` so that ``proj_type`` and ``rank`` refer to the (out, in) = (m, n) layout of
an ``nn.Linear``, the same for every architecture.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..targeting import find_target_modules, is_conv1d
from .base import (
    LowRankConfig,
    TrainingMethod,
    check_rank_fits,
    parameter_ids,
    register_method,
)
from .galore_optim import PROJ_TYPES, GaLoreAdamW, check_projection_settings
from .guard import watch


@dataclass
class GaLoreConfig(LowRankConfig):
    """Settings of GaLore (``rank``: r, rank of the gradient projection)."""

    refresh_interval_field: ClassVar[str | None] = "update_proj_gap"

    update_proj_gap: int = field(
        default=200, metadata={"help": "optimizer steps between two projection refreshes "
                               "(the SVD of the current gradient)."})
    scale: float = field(
        default=0.25, metadata={"flag": "galore_scale",
                                "help": "alpha: factor on the projected-back update (> 0)."})
    proj_type: str = field(
        default="std", metadata={"help": f"projected side, one of {PROJ_TYPES}; 'std' "
                                 "projects the smaller dimension of each (out, in) weight."})

    def validate(self):
        super().validate()
        check_projection_settings(self.update_proj_gap, self.scale, self.proj_type)


@register_method
class GaLore(TrainingMethod):
    """Full-rank training whose target weights take GaLore's projected Adam steps.

    ``prepare`` replaces nothing; it checks that the targets exist and are large enough
    for the rank, and records their names and parameter ids. The schedule (projection
    refresh) lives in the optimizer's per-tensor step count, so ``after_step`` has nothing
    to do and resume needs only the optimizer's state_dict.
    """

    name = "galore"
    config_class = GaLoreConfig

    def __init__(self, config: GaLoreConfig | None = None):
        super().__init__(config)
        self.target_names: list[str] = []
        # Weak references: the method does not keep a dropped model alive, and the id of a
        # dropped weight (which another tensor may get) is never taken for a target.
        self._targets: list[weakref.ref] = []

    @property
    def target_ids(self) -> set[int]:
        """The ids of the prepared model's target weights that are still alive."""
        return {id(w) for w in (ref() for ref in self._targets) if w is not None}

    # --------------------------------------------------------------- life cycle
    def prepare(self, model: nn.Module) -> nn.Module:
        """Validate the targets and remember them; the model is returned unchanged."""
        weights = self._target_weights(model)
        self.target_names = [name for name, _, _ in weights]
        self._targets = [weakref.ref(w) for _, w, _ in weights]
        watch(self)  # fail loudly if an optimizer trains the targets unprojected (.guard)
        return model

    def param_groups(self, model: nn.Module, weight_decay: float = 0.0,
                     exclude: Iterable[torch.Tensor] = ()) -> list[dict]:
        """Dense groups without the target weights, plus one ``galore`` group.

        The targets are looked up in ``model`` itself (not from ids remembered by
        ``prepare``), so a copy of the model, or one never passed to ``prepare``, still gets
        its projected group instead of silently training full-rank. ``exclude`` leaves
        parameters out of every group (:meth:`TrainingMethod.param_groups`).
        """
        exclude = list(exclude)
        groups = super().param_groups(model, weight_decay, exclude=exclude)
        skip = parameter_ids(exclude)
        params, transposed = [], []
        for _, weight, is_transposed in self._trainable_targets(model):
            if id(weight) in skip:
                continue
            params.append(weight)
            transposed.append(is_transposed)
        if params:
            cfg = self.config
            groups.append({"name": "galore", "params": params, "rank": cfg.rank,
                           "update_proj_gap": cfg.update_proj_gap, "scale": cfg.scale,
                           "proj_type": cfg.proj_type, "transposed": transposed,
                           "weight_decay": weight_decay})
        return groups

    def build_optimizer(self, model: nn.Module, optimizer_cls=None, lr: float = 1e-3,
                        weight_decay: float = 0.0, exclude: Iterable[torch.Tensor] = (),
                        **kwargs) -> torch.optim.Optimizer:
        """Build an optimizer over :meth:`param_groups` (default :class:`GaLoreAdamW`)."""
        return super().build_optimizer(model, optimizer_cls or GaLoreAdamW, lr=lr,
                                       weight_decay=weight_decay, exclude=exclude, **kwargs)

    def merge(self, model: nn.Module) -> nn.Module:
        """A deep copy: GaLore's weights are dense already."""
        return copy.deepcopy(model)

    # --------------------------------------------------------------- helpers
    def _special_parameters(self, model: nn.Module) -> set[int]:
        return {id(w) for _, w, _ in self._trainable_targets(model)}

    def _trainable_targets(self, model: nn.Module):
        return [t for t in self._target_weights(model) if t[1].requires_grad]

    def _target_weights(self, model: nn.Module) -> list[tuple[str, nn.Parameter, bool]]:
        """``(layer name, weight, stored transposed)`` of every target, checked for the rank.

        A weight shared by several targets is listed once.

        Raises:
            ValueError: no target matched, or the rank exceeds a target's ``min(m, n)``.
        """
        cfg = self.config
        found, seen = [], set()
        for name, module in find_target_modules(model, cfg.target_modules, cfg.exclude_modules):
            check_rank_fits(name, module, cfg.rank)
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                found.append((name, module.weight, is_conv1d(module)))
        return found
