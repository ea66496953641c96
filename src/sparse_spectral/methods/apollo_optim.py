"""APOLLO's update as pure functions, and :class:`ApolloAdamW`.

APOLLO (Zhu et al. 2024, "APOLLO: SGD-like Memory, AdamW-level Performance") reads AdamW's
update ``N = m / (sqrt(v) + eps)`` as the raw gradient times a scaling matrix ``N / G``, and
coarsens that matrix to one factor per channel (APOLLO) or per tensor (APOLLO-Mini, rank 1).
The factors are estimated in a random rank-r space, where Adam's moments live. For a target
weight's gradient ``G`` (m, n), one step is:

1. Project the smaller dimension with a Gaussian ``P`` whose entries are N(0, 1/r):
   ``R = G P^T`` (m, r), ``P`` (r, n), when m >= n ("right" side); ``R = P^T G`` (r, n),
   ``P`` (m, r), when m < n ("left"). ``P`` is drawn anew every ``update_proj_gap`` steps
   (steps 1, gap + 1, ...); moments are not reset.
2. Adam's moments of ``R``: ``M = b1 M + (1 - b1) R``, ``V = b2 V + (1 - b2) R^2``,
   ``N = M / (sqrt(V) + eps)``.
3. Scaling factors: per channel of the unprojected dimension (the m rows on the right
   side, the n columns on the left) ``s_j = ||N_j|| / (||R_j|| + 1e-8)``, or one
   ``s = ||N|| / (||R|| + 1e-8)`` for ``scale_type="tensor"``.
4. ``U = G * s`` (broadcast over the channel's entries), then the norm-growth limiter
   (from Fira): if ``||U||`` exceeds ``gamma`` times the previous step's limited norm, ``U``
   is scaled down to exactly that (``gamma = norm_growth_limit``, 1.01 in the paper; 0 turns
   the limiter off).
5. ``W <- (W - lr * sqrt(1 - b2^t) / (1 - b1^t) * sqrt(scale) * U) * (1 - lr * wd)``.

Choices, compared with the published ``apollo-torch`` (1.0.3, ``APOLLOAdamW``), whose
arithmetic this follows so that ``benchmarks/apollo_reference_check.py`` can compare the two:

* ``scale`` is apollo-torch's group value: the update is multiplied by ``sqrt(scale)``
  (the paper's alpha; 1 for APOLLO, 128 for APOLLO-Mini by default).
* Bias correction is folded into the step size after the limiter, and eps is added to the
  uncorrected ``sqrt(V)``, as there: the limiter compares uncorrected updates, whose norm
  does not carry the early steps' swing of ``sqrt(1 - b2^t) / (1 - b1^t)``.
* ``P`` is counter-seeded: the generator of refresh ``k`` of projected tensor ``i`` (its
  position among the optimizer's APOLLO parameters, in group order) is seeded with
  ``counter_seed(seed, i, k)``, on the gradient's device, drawn in float32, divided by
  ``sqrt(r)`` and cast to the gradient's dtype. ``P`` is therefore not stored at all: it is
  redrawn every step from ``(seed, i, step // gap)``, resume is exact, and every DDP rank
  draws the same ``P`` without communication (same device type). apollo-torch instead
  chains seeds (next seed = the last of 15 int64 draws seeded by the previous one, first
  seed = the parameter's 1-based index) and keeps a Python ``GradientProjector`` object,
  holding ``P``, in the optimizer state, which ``torch.load(weights_only=True)`` refuses.
* Only the paper's side (the smaller dimension) is offered: apollo-torch's ``proj_type``
  other than "std" project a side that its channel norms (chosen by shape) do not match.
  Its ``scale_front`` (sqrt(scale) before the limiter) is left out: the limiter's ratio is
  unchanged by a constant factor (up to its 1e-8). Its SVD projector is not offered.
* Parameters in groups without ``"rank"`` get plain AdamW, the arithmetic of
  ``torch.optim.AdamW``'s single-tensor path (apollo-torch runs its own AdamW there).

State per projected weight, tensors only (``state_dict()`` loads with
``torch.load(weights_only=True)``): ``step`` (float32 scalar), ``exp_avg`` and
``exp_avg_sq`` in the projected shape (m, r) or (r, n) and the gradient's dtype, and
``limiter_norm`` (a scalar, absent with the limiter off).
"""

from __future__ import annotations

import math

import torch

from .._util.seeding import counter_seed
from ..spectral.optim import adamw_update_, check_adam_hyperparameters
from .base import check_int, check_projected_group

__all__ = [
    "APOLLO_DEFAULTS",
    "NORM_EPS",
    "SCALE_TYPES",
    "ApolloAdamW",
    "check_settings",
    "limit_norm_growth_",
    "project",
    "projected_shape",
    "projection_key",
    "projection_side",
    "random_projection",
    "scaling_factors",
]

SCALE_TYPES = ("channel", "tensor")
#: Keeps a ratio of norms finite for an all-zero channel or tensor (as apollo-torch).
NORM_EPS = 1e-8
#: Defaults filled into an APOLLO param group that leaves a setting out (APOLLO's values).
APOLLO_DEFAULTS = {"update_proj_gap": 200, "scale": 1.0, "scale_type": "channel",
                   "norm_growth_limit": 1.01, "seed": 0}


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value)


def check_settings(rank, update_proj_gap, scale, scale_type, norm_growth_limit, seed,
                   scale_name: str = "scale") -> None:
    """Validate an APOLLO param group's settings (``scale_name``: how messages name scale).

    Raises:
        ValueError: naming the bad value and what is allowed.
    """
    check_int("rank", rank, 1)
    check_int("update_proj_gap", update_proj_gap, 1)
    if scale_type not in SCALE_TYPES:  # first: an unset scale's default depends on it
        raise ValueError(f"scale_type={scale_type!r} is unknown; allowed: "
                         f"{', '.join(SCALE_TYPES)}")
    if not _is_real(scale) or scale <= 0:
        raise ValueError(f"{scale_name}={scale!r} must be a finite number > 0")
    if not _is_real(norm_growth_limit) or not (norm_growth_limit == 0 or norm_growth_limit >= 1):
        raise ValueError(f"norm_growth_limit={norm_growth_limit!r} must be 0 (no limiter) or a "
                         "finite number >= 1")
    check_int("seed", seed)


# --------------------------------------------------------------------------- pure functions
def projection_side(shape) -> str:
    """``"right"`` (``P`` (r, n), ``R = G P^T``) when m >= n, else ``"left"``: the smaller
    dimension of a (m, n) gradient is projected."""
    m, n = shape
    return "right" if m >= n else "left"


def projected_shape(shape, rank: int) -> tuple[int, int]:
    """Shape of the projected gradient ``R`` and of Adam's moments: (m, r) or (r, n)."""
    m, n = shape
    return (m, rank) if projection_side(shape) == "right" else (rank, n)


def projection_key(seed: int, index: int, refresh: int) -> int:
    """The generator seed of refresh number ``refresh`` (0-based) of projected tensor ``index``."""
    return counter_seed(seed, index, refresh)


def random_projection(shape, rank: int, key: int, device, dtype) -> torch.Tensor:
    """The Gaussian projection of a (m, n) gradient, entries N(0, 1/r).

    Args:
        shape: the gradient's (m, n).
        rank: r, in ``[1, min(m, n)]``.
        key: the generator seed (:func:`projection_key`).
        device: where to draw (a CUDA draw differs from a CPU one with the same key).
        dtype: the result's dtype (the draw itself is float32).

    Returns:
        (r, n) on the right side, (m, r) on the left.
    """
    m, n = shape
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank={rank} must be in [1, min(m, n) = {min(m, n)}] for a "
                         f"gradient of shape {tuple(shape)}")
    size = (rank, n) if projection_side(shape) == "right" else (m, rank)
    generator = torch.Generator(device=device).manual_seed(key)
    p = torch.randn(size, generator=generator, device=device, dtype=torch.float32)
    return (p / math.sqrt(rank)).to(dtype)


def project(grad: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``R``: ``G P^T`` (m, r) on the right side, ``P^T G`` (r, n) on the left."""
    return grad @ projection.T if projection_side(grad.shape) == "right" \
        else projection.T @ grad


def scaling_factors(normalized: torch.Tensor, low: torch.Tensor, side: str,
                    scale_type: str) -> torch.Tensor:
    """APOLLO's factors ``||N|| / (||R|| + 1e-8)`` that multiply the raw gradient.

    Args:
        normalized: Adam's ``N = M / (sqrt(V) + eps)`` in the projected shape.
        low: the projected gradient ``R``, same shape.
        side: :func:`projection_side` of the gradient.
        scale_type: ``"channel"``: one factor per channel of the unprojected dimension,
            shaped (m, 1) on the right side and (1, n) on the left so that it broadcasts
            over the (m, n) gradient; ``"tensor"``: a 0-d tensor.
    """
    if scale_type == "tensor":
        return torch.linalg.vector_norm(normalized) / (torch.linalg.vector_norm(low) + NORM_EPS)
    dim = 1 if side == "right" else 0  # the projected (rank) dimension is summed over
    return (torch.linalg.vector_norm(normalized, dim=dim, keepdim=True)
            / (torch.linalg.vector_norm(low, dim=dim, keepdim=True) + NORM_EPS))


def limit_norm_growth_(update: torch.Tensor, state: dict, gamma: float) -> None:
    """Fira's norm-growth limiter, in place: ``||update||`` grows at most ``gamma``-fold.

    ``state["limiter_norm"]`` is the previous step's limited norm; the first call records
    it and changes nothing. No host synchronisation (a clamp, not a Python comparison).
    """
    norm = torch.linalg.vector_norm(update)
    previous = state.get("limiter_norm")
    if previous is None:
        state["limiter_norm"] = norm
        return
    limiter = torch.clamp(norm / (previous + NORM_EPS), min=gamma) / gamma  # >= 1
    update.div_(limiter)
    previous.copy_(norm / limiter)  # in place: the state tensor object stays the same


# --------------------------------------------------------------------------- optimizer
class ApolloAdamW(torch.optim.Optimizer):
    """AdamW that takes APOLLO's scaled-gradient steps for param groups carrying ``"rank"``.

    An APOLLO param group holds 2-D weights and the plain settings ``rank``,
    ``update_proj_gap``, ``scale``, ``scale_type``, ``norm_growth_limit``, ``seed`` (missing
    ones default to :data:`APOLLO_DEFAULTS`) and optionally ``transposed``: one bool per
    parameter, True for weights stored (in, out) like GPT-2's ``Conv1D``, so that sides and
    channels refer to the (out, in) = (m, n) layout. Other groups are plain AdamW. The state
    is described in the module docstring; only tensors.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: added to the (uncorrected) ``sqrt(v)`` in APOLLO groups, to the bias-corrected
            one in plain groups (torch.optim.AdamW).
        weight_decay: decoupled weight decay (after the update in APOLLO groups).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; an APOLLO group's settings and weights are validated here."""
        if param_group.get("rank") is not None:
            if "proj_type" in param_group:  # a GaLore group handed to the wrong optimizer
                raise ValueError("proj_type is a GaLore setting (build GaLore's optimizer "
                                 "with method.build_optimizer); an APOLLO group always "
                                 "projects the smaller dimension of each weight")
            for key, value in APOLLO_DEFAULTS.items():
                param_group.setdefault(key, value)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("rank") is not None:
            self._check_apollo_group(group)

    @staticmethod
    def _check_apollo_group(group: dict) -> None:
        check_settings(group["rank"], group["update_proj_gap"], group["scale"],
                       group["scale_type"], group["norm_growth_limit"], group["seed"])
        check_projected_group(group, "an APOLLO")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0  # position among the APOLLO parameters: keys the projections
        for group in self.param_groups:
            apollo = group.get("rank") is not None
            flags = group["transposed"] if apollo else [False] * len(group["params"])
            for p, transposed in zip(group["params"], flags, strict=True):
                if apollo:
                    index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ApolloAdamW does not support sparse gradients")
                if apollo:
                    self._apollo_update(p, group, transposed, index - 1)
                else:
                    state = self.state[p]
                    if not state:
                        state["step"] = torch.zeros((), dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(
                            p, memory_format=torch.preserve_format)
                    beta1, beta2 = group["betas"]
                    adamw_update_(p, p.grad, state, group["lr"], beta1, beta2, group["eps"],
                                  group["weight_decay"])
        return loss

    def _apollo_update(self, p: torch.Tensor, group: dict, transposed: bool,
                       index: int) -> None:
        """One APOLLO step of weight ``p`` (projected tensor number ``index``)."""
        grad = p.grad.T if transposed else p.grad  # (m, n)
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
        step = state["step"]
        refresh = int(step.item()) // group["update_proj_gap"]
        key = projection_key(group["seed"], index, refresh)
        projection = random_projection(grad.shape, group["rank"], key, grad.device, grad.dtype)
        side = projection_side(grad.shape)
        low = project(grad, projection)  # (m, r) or (r, n)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(low)
            state["exp_avg_sq"] = torch.zeros_like(low)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        step += 1
        exp_avg.mul_(beta1).add_(low, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(low, low, value=1 - beta2)
        normalized = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
        update = grad * scaling_factors(normalized, low, side, group["scale_type"])  # (m, n)
        if group["norm_growth_limit"]:
            limit_norm_growth_(update, state, group["norm_growth_limit"])
        t = step.item()
        step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) * math.sqrt(group["scale"])
        p.add_(update.T if transposed else update, alpha=-step_size)
        if wd != 0:
            p.mul_(1 - lr * wd)  # decoupled decay after the update, as apollo-torch
