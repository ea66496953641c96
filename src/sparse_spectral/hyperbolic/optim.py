"""Riemannian Adam for manifold parameters, and the optimizer pair a hyperbolic model trains with.

:class:`HyboNetRiemannianAdam` is HyboNet's local ``optim/radam.py`` (reference/hybonet.md
section 1.3). It differs from ``geoopt.optim.RiemannianAdam`` in two ways: weight decay on
Euclidean parameters is *decoupled* (AdamW-like: ``p -= lr (m_hat / (sqrt(v_hat) + eps) +
wd p)``) where geoopt adds ``wd p`` to the gradient, and the bias correction counts steps per
param group instead of per parameter. On a :class:`geoopt.ManifoldParameter` both add
``wd p`` to the gradient, convert it to a Riemannian gradient, keep one second moment per
point (``<g, g>_L`` for the Lorentz model), move by the manifold's retraction and parallel-
transport the first moment; ``stabilize`` re-projects points and moments every so many steps.

A training method owns the optimizer of the Euclidean weights (``method.build_optimizer``:
SlotAdamW with per-slot resets for SST, GaLoreAdamW for GaLore), so
:func:`build_hyperbolic_optimizer` gives every model two optimizers: the method's one over
all trainable non-manifold parameters, and a Riemannian Adam over the manifold parameters
(which no method replaces). For ``full`` the pair computes exactly what HyboNet's single
RiemannianAdam computes (checked in tests/test_hybonet_model.py). The pair comes as one
``torch.optim.Optimizer``, a :class:`CombinedOptimizer`, for whatever wants one (``LambdaLR``,
checkpoints, memory accounting, ``method.after_step``); its members stay reachable for
per-member schedulers and accounting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import geoopt
import torch
from geoopt import ManifoldParameter, ManifoldTensor
from torch import nn

from ..spectral.optim import check_adam_hyperparameters

RIEMANNIAN_KINDS = ("hybonet", "geoopt")
# HyboNet's models re-project manifold parameters every 10 steps.
DEFAULT_STABILIZE = 10


def _is_manifold(p: torch.Tensor) -> bool:
    return isinstance(p, (ManifoldParameter, ManifoldTensor))


class HyboNetRiemannianAdam(torch.optim.Optimizer):
    """HyboNet's Riemannian Adam (``gcn/optim/radam.py``), step for step.

    Per step, with ``t`` the param group's step count:

    * Euclidean ``p``: ``m, v`` as Adam; ``p -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps)
      + wd p)`` (decoupled decay).
    * Manifold ``p``: ``g = egrad2rgrad(p, grad + wd p)``; ``m = b1 m + (1-b1) g``;
      ``v = b2 v + (1-b2) component_inner(p, g)`` (one value per point); ``p <- retr_p(-lr
      m_hat / (sqrt(v_hat) + eps))`` and ``m`` parallel-transported to the new point.
    * Every ``stabilize`` steps of a group: ``p = projx(p)``, ``m = proju(p, m)``.

    Unlike HyboNet it does not overwrite ``p.grad`` with the Riemannian gradient, so
    gradients read after ``step()`` are the Euclidean ones.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: ``(beta1, beta2)``.
        eps: added to the denominator.
        weight_decay: see above.
        stabilize: steps between re-projections, or None for never.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, stabilize: int | None = DEFAULT_STABILIZE):
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        if stabilize is not None and (isinstance(stabilize, bool) or not isinstance(stabilize, int)
                                      or stabilize < 1):
            raise ValueError(f"stabilize={stabilize!r} must be None or an int >= 1")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        stabilize=stabilize, step=0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["step"] += 1
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            correction1 = 1 - beta1 ** group["step"]
            correction2 = 1 - beta2 ** group["step"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("HyboNetRiemannianAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if _is_manifold(p):
                    manifold = p.manifold
                    grad = manifold.egrad2rgrad(p, p.grad.add(p, alpha=wd))
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).add_(manifold.component_inner(p, grad),
                                                alpha=1 - beta2)
                    direction = (exp_avg / correction1) / ((exp_avg_sq / correction2).sqrt() + eps)
                    new_point, new_avg = manifold.retr_transp(p, -lr * direction, exp_avg)
                    p.copy_(new_point)
                    exp_avg.copy_(new_avg)
                else:
                    grad = p.grad
                    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    direction = (exp_avg / correction1) / ((exp_avg_sq / correction2).sqrt() + eps)
                    p.sub_(lr * (direction + wd * p))
            if group["stabilize"] is not None and group["step"] % group["stabilize"] == 0:
                self.stabilize_group(group)
        return loss

    @torch.no_grad()
    def stabilize_group(self, group: dict) -> None:
        """Re-project every manifold point of ``group`` and its first moment."""
        for p in group["params"]:
            state = self.state[p]
            if not _is_manifold(p) or not state:
                continue
            p.copy_(p.manifold.projx(p))
            state["exp_avg"].copy_(p.manifold.proju(p, state["exp_avg"]))


def build_riemannian_optimizer(params, kind: str = "hybonet", lr: float = 1e-3,
                               weight_decay: float = 0.0,
                               stabilize: int | None = DEFAULT_STABILIZE,
                               **kwargs) -> torch.optim.Optimizer:
    """A Riemannian Adam: HyboNet's variant or geoopt's.

    Args:
        params: parameters or param groups (manifold parameters, and any others).
        kind: ``"hybonet"`` (:class:`HyboNetRiemannianAdam`) or ``"geoopt"``
            (``geoopt.optim.RiemannianAdam``: coupled weight decay, per-parameter steps).
        lr, weight_decay, stabilize: as in both classes.
        kwargs: ``betas``, ``eps``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "hybonet":
        return HyboNetRiemannianAdam(params, lr=lr, weight_decay=weight_decay,
                                     stabilize=stabilize, **kwargs)
    if kind == "geoopt":
        return geoopt.optim.RiemannianAdam(params, lr=lr, weight_decay=weight_decay,
                                           stabilize=stabilize, **kwargs)
    raise ValueError(f"riemannian optimizer kind={kind!r} is unknown; allowed: "
                     f"{', '.join(RIEMANNIAN_KINDS)}")


def manifold_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable :class:`geoopt.ManifoldParameter` s of ``model``, in model order."""
    return [p for p in model.parameters() if p.requires_grad and _is_manifold(p)]


class _StateView(Mapping):
    """Read-only union of several optimizers' ``state`` mappings (disjoint parameters).

    Looking a parameter up never inserts into the members' ``defaultdict`` s.
    """

    def __init__(self, states: list):
        self._states = states

    def __getitem__(self, param):
        for state in self._states:
            if param in state:
                return state[param]
        raise KeyError(param)

    def __iter__(self):
        for state in self._states:
            yield from state

    def __len__(self) -> int:
        return sum(len(state) for state in self._states)


class CombinedOptimizer(torch.optim.Optimizer):
    """The method's optimizer and a Riemannian Adam (disjoint parameters), as one optimizer.

    ``param_groups`` are the members' own group dicts, so an LR scheduler scales every
    member; ``state`` is a read-only view of all members' states (what
    :func:`~sparse_spectral.spectral.optim.find_state` and memory accounting read, so
    ``method.after_step(step, combined)`` resets SST's and ReLoRA's state in the method's
    member); ``step``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` go to each
    member, the method's first.

    Args:
        method: the training method's optimizer (over the Euclidean parameters).
        riemannian: the Riemannian Adam over the manifold parameters, or None if the model
            has none.

    Attributes:
        method, riemannian: the members as given.
        optimizers: the members that exist, in step order (method's, then Riemannian).
    """

    def __init__(self, method: torch.optim.Optimizer,
                 riemannian: torch.optim.Optimizer | None = None):
        if method is None:
            raise ValueError("CombinedOptimizer needs at least one optimizer: the method's")
        self.method, self.riemannian = method, riemannian
        self.optimizers = [o for o in (method, riemannian) if o is not None]
        super().__init__([g for o in self.optimizers for g in o.param_groups], {})
        self._sync()

    def _sync(self) -> None:
        # load_state_dict gives members new group dicts and state mappings: re-point to them.
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self.state = _StateView([o.state for o in self.optimizers])

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optimizers")
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            count = len(saved) if isinstance(saved, list) else "no"
            raise ValueError(f"state holds {count} optimizers, this CombinedOptimizer has "
                             f"{len(self.optimizers)}")
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            optimizer.load_state_dict(state)
        self._sync()


def build_hyperbolic_optimizer(model: nn.Module, method, lr: float, weight_decay: float = 0.0,
                               riemannian: str = "hybonet",
                               stabilize: int | None = DEFAULT_STABILIZE) -> CombinedOptimizer:
    """The optimizer of a (prepared) model with manifold parameters, HyboNet's param groups.

    * ``method.build_optimizer(model, lr, weight_decay, exclude=manifold)``: every trainable
      parameter except the manifold ones. The method's groups decay matrices (dim >= 2) and
      not 1-D or scalar tensors, which for HyboNet's models is HyboNet's name rule (no decay
      on ``bias``/``scale``); methods put their own factors in groups of their own (SST: no
      decay on U, s, Vh).
    * A Riemannian Adam (``riemannian``: ``"hybonet"`` or ``"geoopt"``) over the manifold
      parameters (:class:`geoopt.ManifoldParameter`: HyboNet's class prototypes, the Lorentz
      Transformer's tables), with weight decay 0 as HyboNet does, for graph and MT alike.

    Args:
        model: the model after ``method.prepare``.
        method: a :class:`~sparse_spectral.methods.TrainingMethod`.
        lr: learning rate of both optimizers.
        weight_decay: decoupled decay of the method's decayed group.
        riemannian: kind of the Riemannian Adam.
        stabilize: its re-projection interval.

    Returns:
        :class:`CombinedOptimizer` of the two (``riemannian`` None without manifold
        parameters). Pass it to ``method.after_step(step, optimizer)`` directly.

    Raises:
        ValueError: unknown ``riemannian`` kind.
        RuntimeError: the method's optimizer took a manifold parameter (a method ignoring
            ``exclude``).
    """
    if riemannian not in RIEMANNIAN_KINDS:
        raise ValueError(f"riemannian optimizer kind={riemannian!r} is unknown; allowed: "
                         f"{', '.join(RIEMANNIAN_KINDS)}")
    manifold = manifold_parameters(model)
    euclidean = method.build_optimizer(model, lr=lr, weight_decay=weight_decay, exclude=manifold)
    held = {id(p) for group in euclidean.param_groups for p in group["params"]}
    if any(id(p) in held for p in manifold):
        raise RuntimeError(f"{type(method).__name__}.build_optimizer took a manifold parameter")
    rie = None
    if manifold:
        rie = build_riemannian_optimizer([{"params": manifold, "weight_decay": 0.0}],
                                         kind=riemannian, lr=lr, stabilize=stabilize)
    return CombinedOptimizer(euclidean, rie)
