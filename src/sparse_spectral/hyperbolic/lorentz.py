"""Lorentz-model operations used by HyboNet, as pure functions plus a thin geoopt manifold.

The hyperboloid is geoopt's: ``{x in R^{n+1} : <x, x>_L = -k, x_0 > 0}`` with the Minkowski
inner product ``<u, v>_L = -u_0 v_0 + u_s . v_s`` (coordinate 0 is "time"). ``k`` is geoopt's
"negative curvature" parameter (sectional curvature ``-1/k``); HyboNet always uses ``k = 1``.

HyboNet's own formulas hard-code ``k = 1`` (reference/hybonet.md section 4.1). The functions
here carry ``k`` through so that the curvature is a setting, and reduce *exactly* to HyboNet's
arithmetic at ``k = 1``:

* :func:`expmap0` / :func:`expmap` cap the hyperbolic angle ``|u|_L / sqrt(k)`` at
  ``max_norm = 10`` (HyboNet's ``EXP_MAX_NORM``; at ``k = 1`` the angle is the radius) and
  floor ``<u, u>_L`` at ``1e-9`` with a leaky clamp, then project;
* :func:`centroid` normalises ``s = sum_j w_j x_j`` to ``sqrt(k) s / sqrt(|<s, s>_L|)``;
* :func:`sqdist` is the squared Lorentzian distance ``-2k - 2 <x, y>_L``.

Where geoopt has the same operation with the same formula (tangent projection, Riemannian
gradient, parallel transport, logmap, geodesic distance) the :class:`Lorentz` class inherits
geoopt's; only the exponential map is overridden, to carry HyboNet's radius cap into the
Riemannian optimizers.
"""

from __future__ import annotations

import math
from typing import Any

import geoopt
import torch

# HyboNet's EXP_MAX_NORM: the largest hyperbolic angle (= radius at k = 1) an expmap moves.
EXP_MAX_NORM = 10.0
# Floor of <u, u>_L before the square root in the expmaps (HyboNet's utils.sqrt).
_NORM_SQ_MIN = 1e-9
# Floor of |<s, s>_L| in the centroid and of |y_s|^2 in LorentzLinear (HyboNet).
CENTROID_EPS = 1e-8
# Gradient factor outside a leaky clamp's range (HyboNet's utils.eps).
_LEAK = 1e-8

Curvature = float | torch.Tensor


class _LeakyClamp(torch.autograd.Function):
    """``clamp`` whose gradient is scaled by ``1e-8`` (not zeroed) outside the range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x.ge(low) & x.le(high))
        return x.clamp(min=low, max=high)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        inside = inside.to(grad.dtype)
        return grad * (inside + (1 - inside) * _LEAK), None, None


def leaky_clamp(x: torch.Tensor, low: float = -math.inf, high: float = math.inf) -> torch.Tensor:
    """Clamp ``x`` to ``[low, high]``; outside the range the gradient is multiplied by 1e-8."""
    return _LeakyClamp.apply(x, low, high)


def _sqrt_k(k: Curvature, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(k, dtype=like.dtype, device=like.device).sqrt()


# --------------------------------------------------------------------------- inner products
def inner(u: torch.Tensor, v: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Minkowski inner product ``-u_0 v_0 + u_s . v_s`` over the last dimension.

    Args:
        u: ``(..., n+1)``.
        v: ``(..., n+1)``, broadcastable with ``u``.
        keepdim: keep the reduced dimension (size 1).

    Returns:
        ``(...)``, or ``(..., 1)`` with ``keepdim``.
    """
    uv = u * v
    return uv.narrow(-1, 1, uv.shape[-1] - 1).sum(-1, keepdim=keepdim) - (
        uv[..., 0:1] if keepdim else uv[..., 0])


def cinner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Minkowski inner products ``<x_i, y_j>_L`` (HyboNet's ``cinner``).

    Args:
        x: ``(..., N, n+1)``.
        y: ``(..., M, n+1)``.

    Returns:
        ``(..., N, M)``.
    """
    x = torch.cat([-x[..., 0:1], x[..., 1:]], dim=-1)
    return x @ y.transpose(-1, -2)


def sqdist(x: torch.Tensor, y: torch.Tensor, k: Curvature = 1.0) -> torch.Tensor:
    """Squared Lorentzian distance ``-2k - 2 <x, y>_L`` (>= 0 on the hyperboloid).

    It equals ``2k (cosh(d / sqrt(k)) - 1)`` for geodesic distance ``d``; HyboNet scores with
    it instead of ``d`` so that no arccosh runs in the forward pass.

    Args:
        x, y: ``(..., n+1)`` points, broadcastable.
        k: curvature parameter.

    Returns:
        ``(...)``.
    """
    return -2 * k - 2 * inner(x, y)


def pairwise_sqdist(x: torch.Tensor, y: torch.Tensor, k: Curvature = 1.0) -> torch.Tensor:
    """``sqdist(x_i, y_j)`` for all pairs: ``(..., N, n+1), (..., M, n+1) -> (..., N, M)``."""
    return -2 * k - 2 * cinner(x, y)


# --------------------------------------------------------------------------- maps
def project(x: torch.Tensor, k: Curvature = 1.0) -> torch.Tensor:
    """Put ``x`` on the hyperboloid by recomputing its time: ``(sqrt(k + |x_s|^2), x_s)``.

    Args:
        x: ``(..., n+1)``; its time coordinate is ignored.

    Returns:
        ``(..., n+1)``.
    """
    space = x[..., 1:]
    time = (k + (space * space).sum(-1, keepdim=True)).sqrt()
    return torch.cat([time, space], dim=-1)


def _angle_and_direction(u: torch.Tensor, k: Curvature, max_norm: float):
    """``(theta, u_hat)``: capped hyperbolic angle ``|u|_L / sqrt(k)`` and ``u / |u|_L``.

    The direction uses the uncapped (but floored) norm, as HyboNet does.
    """
    norm = leaky_clamp(inner(u, u, keepdim=True), low=_NORM_SQ_MIN).sqrt()
    theta = (norm / _sqrt_k(k, u)).clamp_max(max_norm)
    return theta, u / norm


def expmap0(u: torch.Tensor, k: Curvature = 1.0, max_norm: float = EXP_MAX_NORM,
            project_result: bool = True) -> torch.Tensor:
    """Exponential map at the origin ``(sqrt(k), 0, ..., 0)``, radius-capped, then projected.

    With ``theta = min(|u|_L / sqrt(k), max_norm)`` and ``u_hat = u / |u|_L``:
    ``p = sqrt(k) (cosh(theta) + sinh(theta) u_hat_0, sinh(theta) u_hat_s)``, then
    :func:`project`. For ``u_0 = 0`` this is ``sqrt(k) (cosh theta, sinh theta u_s / |u_s|)``.
    A zero ``u`` maps to the origin.

    Args:
        u: ``(..., n+1)`` tangent vector at the origin (normally ``u_0 = 0``).
        k: curvature parameter.
        max_norm: cap of the hyperbolic angle (HyboNet: 10).
        project_result: finish with :func:`project` (HyboNet: yes).

    Returns:
        ``(..., n+1)`` points on the hyperboloid.
    """
    theta, direction = _angle_and_direction(u, k, max_norm)
    sqrt_k = _sqrt_k(k, u)
    spatial = sqrt_k * torch.sinh(theta) * direction
    time = sqrt_k * torch.cosh(theta) + spatial[..., 0:1]
    point = torch.cat([time, spatial[..., 1:]], dim=-1)
    return project(point, k) if project_result else point


def proju(x: torch.Tensor, v: torch.Tensor, k: Curvature = 1.0) -> torch.Tensor:
    """Project ``v`` onto the tangent space at ``x``: ``v + <x, v>_L x / k``."""
    return v + inner(x, v, keepdim=True) * x / k


def expmap(x: torch.Tensor, u: torch.Tensor, k: Curvature = 1.0,
           max_norm: float = EXP_MAX_NORM, project_u: bool = True,
           project_result: bool = True) -> torch.Tensor:
    """Exponential map at ``x``, radius-capped, then projected (HyboNet's retraction).

    ``p = cosh(theta) x + sqrt(k) sinh(theta) u_hat`` with ``theta`` and ``u_hat`` as in
    :func:`expmap0` after projecting ``u`` to the tangent space at ``x``.

    Args:
        x: ``(..., n+1)`` points.
        u: ``(..., n+1)`` vectors (tangent at ``x`` after projection).
        k: curvature parameter.
        max_norm: cap of the hyperbolic angle (HyboNet: 10).
        project_u: project ``u`` onto the tangent space first (HyboNet: yes).
        project_result: finish with :func:`project` (HyboNet: yes).

    Returns:
        ``(..., n+1)``.
    """
    if project_u:
        u = proju(x, u, k)
    theta, direction = _angle_and_direction(u, k, max_norm)
    point = torch.cosh(theta) * x + _sqrt_k(k, u) * torch.sinh(theta) * direction
    return project(point, k) if project_result else point


def centroid(x: torch.Tensor, weights: torch.Tensor | None = None,
             k: Curvature = 1.0) -> torch.Tensor:
    """Lorentz centroid: ``s = w x`` normalised to ``sqrt(k) s / sqrt(max(|<s, s>_L|, 1e-8))``.

    For non-negative weights over points of the upper sheet ``s`` is timelike, so the result
    lies on the hyperboloid (HyboNet's ``mid_point`` and graph aggregation).

    Args:
        x: ``(..., N, n+1)`` points.
        weights: ``(..., M, N)`` dense or sparse weights, a ``(M, N)`` fixed operand
            (:mod:`sparse_spectral.linear`, e.g. a CSR
            :class:`~sparse_spectral.sparse_rows.SparseRows`), or None for the plain mean.
        k: curvature parameter.

    Returns:
        ``(..., M, n+1)``, or ``(..., n+1)`` without weights.
    """
    if weights is None:
        s = x.mean(dim=-2)
    else:  # a tensor, or a fixed operand such as SparseRows (its own product)
        s = weights @ x
    denom = inner(s, s, keepdim=True).abs().clamp_min(CENTROID_EPS).sqrt()
    return _sqrt_k(k, s) * s / denom


def origin(*shape: int, k: Curvature = 1.0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Points ``(sqrt(k), 0, ..., 0)`` of shape ``shape`` (last entry: ambient size n+1)."""
    point = torch.zeros(*shape, dtype=dtype)
    point[..., 0] = math.sqrt(float(k))
    return point


def random_normal(*shape: int, k: Curvature = 1.0, dtype: torch.dtype | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """HyboNet's ``random_normal``: unit-norm Gaussian rows (time included) through expmap0.

    Every row ``g`` is rescaled to Euclidean norm 1 (so the scale of the Gaussian has no
    effect) and mapped by :func:`expmap0`; the Lorentz norm is ``sqrt(1 - 2 g_0^2) <= 1``,
    so points land within geodesic distance 1 of the origin. Used for class prototypes.

    Args:
        shape: ``(..., n+1)``.
        k: curvature parameter.
        dtype: floating dtype (default: torch's default).
        generator: random source.

    Returns:
        ``shape`` points on the hyperboloid.
    """
    g = torch.randn(*shape, dtype=dtype, generator=generator)
    return expmap0(g / g.norm(dim=-1, keepdim=True), k)


def check_point(x: torch.Tensor, k: Curvature = 1.0) -> torch.Tensor:
    """Constraint violation ``|<x, x>_L + k|`` per point (0 on the hyperboloid): ``(...)``."""
    return (inner(x, x) + k).abs()


# --------------------------------------------------------------------------- manifold class
class Lorentz(geoopt.Lorentz):
    """geoopt's Lorentz manifold with HyboNet's radius-capped exponential map.

    geoopt's tangent projection, Riemannian gradient, parallel transport and projection are
    the formulas HyboNet uses and are inherited; ``expmap``/``retr``/``expmap0`` are replaced
    by :func:`expmap` / :func:`expmap0` (angle cap ``max_norm``), which is what a Riemannian
    Adam step on a :class:`geoopt.ManifoldParameter` of this manifold moves along.

    Args:
        k: curvature parameter (hyperboloid ``<x, x>_L = -k``); HyboNet uses 1.
        max_norm: cap of the hyperbolic angle in the exponential maps.
    """

    def __init__(self, k: float = 1.0, max_norm: float = EXP_MAX_NORM):
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise ValueError(f"curvature k={k!r} must be a number > 0")
        super().__init__(k=float(k), learnable=False)
        self.max_norm = float(max_norm)

    def expmap(self, x: torch.Tensor, u: torch.Tensor, *, norm_tan: bool = True,
               project: bool = True, dim: int = -1) -> torch.Tensor:
        _last_dim_only(dim)
        return expmap(x, u, self.k, self.max_norm, project_u=norm_tan, project_result=project)

    retr = expmap

    def expmap0(self, u: torch.Tensor, *, project: bool = True, dim: int = -1) -> torch.Tensor:
        _last_dim_only(dim)
        return expmap0(u, self.k, self.max_norm, project_result=project)

    def cinner(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cinner(x, y)

    def sqdist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sqdist(x, y, self.k)

    def centroid(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return centroid(x, weights, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k.item():g}, max_norm={self.max_norm:g}"


def _last_dim_only(dim: int) -> None:
    if dim != -1:
        raise ValueError(f"dim={dim}: only the last dimension (-1) holds the coordinates")
