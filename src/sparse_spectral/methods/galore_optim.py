"""GaLore's gradient projection as pure functions, and :class:`GaLoreAdamW`.

GaLore (Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
Projection") trains full-rank weights but runs Adam in a rank-r subspace of each target
weight's gradient ``G`` (m, n): every ``update_proj_gap`` steps (the first step included) a
projection ``P`` is taken from the float32 SVD of the current gradient, Adam's moments live
in the projected shape, and the normalised update is projected back, scaled by ``scale`` and
applied with ``-lr`` (SPEC section 5).

Why not the published ``galore-torch`` package: version 1.0 (PyPI) runs its ``AdamW`` on
torch 2.13 (its package ``__init__`` needs ``bitsandbytes``, which is not installed here;
importing ``galore_torch.adamw`` directly works), but its optimizer state holds a Python
``GaLoreProjector`` object and a Python int step per tensor. Checked here:
``torch.load(buf, weights_only=True)`` of its ``optimizer.state_dict()`` fails with
``UnpicklingError: Weights only load failed``. STYLE.md lists "Python objects inside
optimizer state" as a known complaint, so the projection is implemented here and its state
holds tensors only: ``"step"`` (float32 scalar), ``"projection"`` (the matrix ``P``),
``"exp_avg"`` and ``"exp_avg_sq"`` (projected shape). The settings (rank,
update_proj_gap, scale, proj_type) live in the param group as plain values.

Arithmetic, compared with galore-torch's ``AdamW``:

* Projection sides follow its ``GaLoreProjector`` (``std``, ``reverse_std``, ``left``,
  ``right``; its two-sided ``full`` type is not offered). The side is decided from the
  gradient's (m, n) shape by :func:`projection_side` rather than re-guessed from the
  low-rank shape when projecting back.
* The projection is recomputed when the tensor's completed step count is a multiple of
  ``update_proj_gap`` (steps 1, gap + 1, ... counted from 1), as there; moments are not reset.
* Adam's epsilon is added after the bias correction, as in the paper's Algorithm 2 and in
  ``torch.optim.AdamW``: ``N = m_hat / (sqrt(v_hat) + eps)``. galore-torch adds it to the
  uncorrected ``sqrt(v)``, which equals using ``eps / sqrt(1 - beta2^t)`` here; with
  ``eps = 0`` both agree: ``benchmarks/galore_reference_check.py`` measured a largest
  weight difference of 9e-16 in float64 (1.7e-6 in float32) after 20 steps across four
  refreshes, for every ``proj_type``, against galore-torch 1.0 on torch 2.13.
* Decoupled weight decay on projected weights comes *after* the update, as galore-torch's
  ``AdamW`` does it: ``W <- (W - lr * scale * P N) * (1 - lr * wd)``. Parameters in groups
  without ``"rank"`` get plain AdamW with the decay first, the same arithmetic as
  ``torch.optim.AdamW``'s single-tensor path.
"""

from __future__ import annotations

import math

import torch

from .._util.collectives import broadcast_
from ..spectral.optim import adamw_update_, check_adam_hyperparameters
from .base import check_int, check_projected_group

__all__ = [
    "PROJ_TYPES",
    "check_projection_settings",
    "check_settings",
    "projection_side",
    "projected_shape",
    "compute_projection",
    "project",
    "project_back",
    "GaLoreAdamW",
]

PROJ_TYPES = ("std", "reverse_std", "left", "right")

# Defaults filled into a GaLore param group that leaves a setting out (the paper's values).
GALORE_DEFAULTS = {"update_proj_gap": 200, "scale": 0.25, "proj_type": "std"}


def check_settings(rank, update_proj_gap, scale, proj_type) -> None:
    """Validate a GaLore param group's settings: the rank and :func:`check_projection_settings`.

    Raises:
        ValueError: naming the bad value and the allowed range.
    """
    check_int("rank", rank, 1)
    check_projection_settings(update_proj_gap, scale, proj_type)


def check_projection_settings(update_proj_gap, scale, proj_type) -> None:
    """Validate GaLore's projection settings other than the rank.

    Raises:
        ValueError: naming the bad value and the allowed range.
    """
    check_int("update_proj_gap", update_proj_gap, 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} must be a finite number > 0")
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"proj_type={proj_type!r} is unknown; allowed: {', '.join(PROJ_TYPES)}")


# --------------------------------------------------------------------------- pure functions
def projection_side(shape, proj_type: str) -> str:
    """Which side of a gradient of ``shape`` (m, n) is projected.

    ``"right"``: ``P`` (r, n) from ``Vh``, low-rank gradient ``G P^T`` (m, r).
    ``"left"``: ``P`` (m, r) from ``U``, low-rank gradient ``P^T G`` (r, n).
    ``std`` projects the smaller dimension (right when m >= n), ``reverse_std`` the larger.
    """
    m, n = shape
    if proj_type == "std":
        return "right" if m >= n else "left"
    if proj_type == "reverse_std":
        return "left" if m >= n else "right"
    if proj_type in ("left", "right"):
        return proj_type
    raise ValueError(f"proj_type={proj_type!r} is unknown; allowed: {', '.join(PROJ_TYPES)}")


def projected_shape(shape, rank: int, proj_type: str) -> tuple[int, int]:
    """Shape of the low-rank gradient (and of Adam's moments) for a (m, n) weight."""
    m, n = shape
    return (m, rank) if projection_side(shape, proj_type) == "right" else (rank, n)


def compute_projection(grad: torch.Tensor, rank: int, proj_type: str) -> torch.Tensor:
    """The projection matrix from the SVD of ``grad``, computed in float32.

    Args:
        grad: gradient (m, n).
        rank: r, at most ``min(m, n)``.
        proj_type: one of :data:`PROJ_TYPES`.

    Returns:
        ``Vh[:r]`` (r, n) for the right side or ``U[:, :r]`` (m, r) for the left side, in
        ``grad``'s dtype, as a fresh contiguous tensor (it does not pin the full SVD).
    """
    side = projection_side(grad.shape, proj_type)
    if not 1 <= rank <= min(grad.shape):
        raise ValueError(f"rank={rank} must be in [1, min(m, n) = {min(grad.shape)}] for a "
                         f"gradient of shape {tuple(grad.shape)}")
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    p = vh[:rank] if side == "right" else u[:, :rank]
    return p.to(grad.dtype).clone(memory_format=torch.contiguous_format)


def project(grad: torch.Tensor, projection: torch.Tensor, side: str) -> torch.Tensor:
    """Low-rank gradient: ``G P^T`` (m, r) for the right side, ``P^T G`` (r, n) for the left."""
    return grad @ projection.T if side == "right" else projection.T @ grad


def project_back(low_rank: torch.Tensor, projection: torch.Tensor, side: str) -> torch.Tensor:
    """Full-shape (m, n) tensor: ``N P`` for the right side, ``P N`` for the left."""
    return low_rank @ projection if side == "right" else projection @ low_rank


# --------------------------------------------------------------------------- optimizer
def _adamw_update(p, grad, state, lr, beta1, beta2, eps, wd) -> None:
    """Plain AdamW for a non-target parameter (torch.optim.AdamW's arithmetic)."""
    if not state:
        state["step"] = torch.zeros((), dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    adamw_update_(p, grad, state, lr, beta1, beta2, eps, wd)


def _refresh_projection(state: dict, grad: torch.Tensor, group: dict, dtype) -> None:
    """Recompute ``state["projection"]`` from ``grad`` (m, n), in place once it exists.

    In place keeps the state tensor object stable for checkpoints and wrappers holding it.
    Under ``torch.distributed`` (DDP: ``grad`` is all-reduced, so equal on every rank) rank
    0's projection is broadcast to the others: LAPACK's SVD gives different bits at
    different thread counts, and the ranks' projections must be identical.
    """
    projection = compute_projection(grad, group["rank"], group["proj_type"]).to(dtype)
    broadcast_([projection], src=0)
    if "projection" in state:
        state["projection"].copy_(projection)
    else:
        state["projection"] = projection


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW that runs in GaLore's projected space for param groups carrying ``"rank"``.

    A GaLore param group holds 2-D weights and the plain settings ``rank``,
    ``update_proj_gap``, ``scale``, ``proj_type`` (missing ones default to 200, 0.25,
    ``"std"``) and optionally ``transposed``: one bool per parameter, True for weights
    stored (in, out) like GPT-2's ``Conv1D``, so that sides and ranks refer to the
    (out, in) = (m, n) layout. Other groups are plain AdamW. State per projected weight:
    ``step`` (float32 scalar), ``projection`` (r, n) or (m, r), ``exp_avg`` and
    ``exp_avg_sq`` in the projected shape; only tensors, so ``state_dict()`` loads with
    ``torch.load(weights_only=True)``.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: added to the bias-corrected ``sqrt(v)``.
        weight_decay: decoupled weight decay (after the update in GaLore groups).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; a GaLore group's settings and weights are validated here."""
        if param_group.get("rank") is not None:
            if "scale_type" in param_group:  # an APOLLO group handed to the wrong optimizer
                raise ValueError("scale_type is an APOLLO setting: build APOLLO's optimizer "
                                 "with method.build_optimizer (ApolloAdamW)")
            for key, value in GALORE_DEFAULTS.items():
                param_group.setdefault(key, value)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("rank") is not None:
            self._check_galore_group(group)

    @staticmethod
    def _check_galore_group(group: dict) -> None:
        check_settings(group["rank"], group["update_proj_gap"], group["scale"],
                       group["proj_type"])
        check_projected_group(group, "a GaLore")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            galore = group.get("rank") is not None
            flags = group["transposed"] if galore else [False] * len(group["params"])
            for p, transposed in zip(group["params"], flags, strict=True):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                if galore:
                    self._galore_update(p, group, transposed)
                else:
                    beta1, beta2 = group["betas"]
                    _adamw_update(p, p.grad, self.state[p], group["lr"], beta1, beta2,
                                  group["eps"], group["weight_decay"])
        return loss

    def _galore_update(self, p: torch.Tensor, group: dict, transposed: bool) -> None:
        """One projected Adam step of weight ``p``; ``transposed``: stored as (n, m)."""
        grad = p.grad.T if transposed else p.grad  # (m, n)
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
        step = state["step"]
        # Refresh at steps 1, gap + 1, ...: the count of completed steps is a multiple of gap.
        if "projection" not in state or int(step.item()) % group["update_proj_gap"] == 0:
            _refresh_projection(state, grad, group, p.dtype)
        projection = state["projection"]
        side = projection_side(grad.shape, group["proj_type"])
        low = project(grad, projection, side)  # (m, r) or (r, n)
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(low)
            state["exp_avg_sq"] = torch.zeros_like(low)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        step += 1
        exp_avg.lerp_(low, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(low, low, value=1 - beta2)
        t = step.item()
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        update = project_back(exp_avg / denom, projection, side)  # (m, n)
        p.add_(update.T if transposed else update, alpha=-lr * group["scale"] / (1 - beta1**t))
        if wd != 0:
            # galore-torch decays after the update (torch's AdamW decays before).
            p.mul_(1 - lr * wd)
