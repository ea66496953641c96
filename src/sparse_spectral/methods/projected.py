"""Methods that keep dense weights and project only the optimizer: GaLore and APOLLO.

Nothing in the model is replaced. ``prepare`` checks the target layers and records their
weights; ``param_groups`` puts those weights into one param group of the method's own
optimizer (its settings as plain values, plus ``transposed``: one bool per weight) and
every other trainable parameter into the plain AdamW groups.

GPT-2's ``Conv1D`` stores its weight as (in, out); the group marks such weights
``transposed`` so that sides and ranks refer to the (out, in) = (m, n) layout of an
``nn.Linear``, the same for every architecture.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from ..targeting import find_target_modules, is_conv1d
from .base import TrainingMethod, check_rank_fits, parameter_ids
from .guard import watch


class ProjectedMethod(TrainingMethod):
    """Full-rank training whose target weights take the method optimizer's projected steps.

    Subclasses give ``optimizer_class``, ``group_name`` (the param group's ``"name"``),
    ``label`` (how messages name the method), ``group_marker`` (a key every group of the
    method carries, which the guard looks for), :meth:`group_settings` and
    :meth:`target_state_numel`. The schedule (projection refresh) lives in the optimizer's
    per-tensor step count, so ``after_step`` has nothing to do and resume needs only the
    optimizer's state_dict.
    """

    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Optimizer
    group_name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    group_marker: ClassVar[str] = "rank"

    def __init__(self, config=None):
        super().__init__(config)
        self.target_names: list[str] = []
        # Weak references: the method does not keep a dropped model alive, and the id of a
        # dropped weight (which another tensor may get) is never taken for a target.
        self._targets: list[weakref.ref] = []

    @property
    def target_ids(self) -> set[int]:
        """The ids of the prepared model's target weights that are still alive."""
        return {id(w) for w in (ref() for ref in self._targets) if w is not None}

    def group_settings(self) -> dict[str, Any]:
        """The method's settings as the optimizer reads them from its param group."""
        raise NotImplementedError

    def target_state_numel(self, shape: tuple[int, int]) -> int:
        """Optimizer-state numbers the method keeps for one (m, n) target, step counter aside."""
        raise NotImplementedError

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
        """Dense groups without the target weights, plus the method's own group.

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
            groups.append({"name": self.group_name, "params": params, **self.group_settings(),
                           "transposed": transposed, "weight_decay": weight_decay})
        return groups

    def build_optimizer(self, model: nn.Module, optimizer_cls=None, lr: float = 1e-3,
                        weight_decay: float = 0.0, exclude: Iterable[torch.Tensor] = (),
                        **kwargs) -> torch.optim.Optimizer:
        """Build an optimizer over :meth:`param_groups` (default: ``optimizer_class``)."""
        return super().build_optimizer(model, optimizer_cls or self.optimizer_class, lr=lr,
                                       weight_decay=weight_decay, exclude=exclude, **kwargs)

    def merge(self, model: nn.Module) -> nn.Module:
        """A deep copy: the weights are dense already."""
        return copy.deepcopy(model)

    def planned_state_numel(self, model: nn.Module) -> dict[int, int]:
        """``{id(weight): optimizer-state numbers}`` of each trainable target of ``model``.

        Works on the meta device (shapes only); see :func:`~..accounting.planned_state_bytes`.
        """
        return {id(w): self.target_state_numel(tuple(w.shape[::-1] if transposed else w.shape))
                for _, w, transposed in self._trainable_targets(model)}

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
