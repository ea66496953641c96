"""Lorentz-model numerics, LorentzLinear and HyboNet's Riemannian Adam.

"On the hyperboloid" means ``|<x, x>_L + k| <= tol * max(k, x_0^2)`` with tol 1e-5 (float32)
or 1e-10 (float64): the constraint is a difference of squares of size ``x_0^2``, so rounding
scales with it (at radius 10, x_0 ~ 1e4). Points within radius 3 also meet the absolute
tolerance.
"""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
from geoopt.manifolds.lorentz import math as gmath
from torch import nn

from sparse_spectral.hyperbolic import (
    EXP_MAX_NORM,
    HyboNetRiemannianAdam,
    Lorentz,
    LorentzAgg,
    LorentzLinear,
    build_riemannian_optimizer,
    centroid,
    check_point,
    cinner,
    expmap,
    expmap0,
    inner,
    origin,
    pairwise_sqdist,
    project,
    proju,
    random_normal,
    sqdist,
)
from sparse_spectral.hyperbolic.layers import SparseInputDropout
from sparse_spectral.hyperbolic.lorentz import leaky_clamp
from sparse_spectral.spectral import SlotAdamW

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
CLOSE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
SEEDS = pytest.mark.parametrize("seed", [0, 1, 2])
CURVATURES = pytest.mark.parametrize("k", [1.0, 0.5, 2.0])


def assert_on_manifold(x: torch.Tensor, k: float, dtype: torch.dtype) -> None:
    scale = (x[..., 0] ** 2).clamp_min(k)
    worst = (check_point(x, k) / scale).max().item()
    assert worst <= TOL[dtype], f"constraint violation {worst:.3g} > {TOL[dtype]}"


def tangent0(n: int, d: int, radius: float | None, gen: torch.Generator, dtype) -> torch.Tensor:
    """Tangent vectors at the origin (time 0), of norm ``radius`` (or random norms)."""
    u = torch.randn(n, d, generator=gen, dtype=dtype)
    u[:, 0] = 0
    if radius is not None:
        u = u / u.norm(dim=1, keepdim=True) * radius
    return u


def points(n: int, d: int, gen: torch.Generator, dtype, k: float = 1.0, radius=2.0):
    u = tangent0(n, d, None, gen, dtype)
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen, dtype=dtype) * radius
    return expmap0(u, k)


# --------------------------------------------------------------------------- inner products
@DTYPES
@SEEDS
def test_inner_and_cinner_match_geoopt(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(7, 5, generator=gen, dtype=dtype)
    v = torch.randn(7, 5, generator=gen, dtype=dtype)
    torch.testing.assert_close(inner(u, v), gmath.inner(u, v), **CLOSE[dtype])
    torch.testing.assert_close(inner(u, v, keepdim=True), gmath.inner(u, v, keepdim=True),
                               **CLOSE[dtype])
    w = torch.randn(4, 5, generator=gen, dtype=dtype)
    expected = gmath.inner(u.unsqueeze(1), w.unsqueeze(0))
    torch.testing.assert_close(cinner(u, w), expected, **CLOSE[dtype])


@DTYPES
@SEEDS
@CURVATURES
def test_sqdist_is_squared_lorentzian_distance_of_geoopt_dist(dtype, seed, k):
    gen = torch.Generator().manual_seed(seed)
    x, y = points(6, 4, gen, dtype, k), points(6, 4, gen, dtype, k)
    d = geoopt.Lorentz(k=torch.tensor(k, dtype=dtype)).dist(x, y)
    # float32 loses digits in acosh near 0, hence the looser comparison there
    close = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else CLOSE[dtype]
    torch.testing.assert_close(sqdist(x, y, k), 2 * k * (torch.cosh(d / math.sqrt(k)) - 1), **close)
    assert (sqdist(x, x, k).abs() <= 1e-4).all()
    torch.testing.assert_close(pairwise_sqdist(x, y, k)[2, 3], sqdist(x[2], y[3], k))


# --------------------------------------------------------------------------- projection
@DTYPES
@SEEDS
@CURVATURES
def test_project_lands_on_manifold_matches_geoopt_and_is_idempotent(dtype, seed, k):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 6, generator=gen, dtype=dtype) * 3
    p = project(x, k)
    assert_on_manifold(p, k, dtype)
    torch.testing.assert_close(p, geoopt.Lorentz(k=torch.tensor(k, dtype=dtype)).projx(x),
                               **CLOSE[dtype])
    torch.testing.assert_close(project(p, k), p, **CLOSE[dtype])
    assert torch.equal(p[:, 1:], x[:, 1:])


# --------------------------------------------------------------------------- expmap0
@DTYPES
@SEEDS
@CURVATURES
def test_expmap0_matches_geoopt_below_the_cap_and_round_trips(dtype, seed, k):
    gen = torch.Generator().manual_seed(seed)
    u = tangent0(40, 8, None, gen, dtype)
    # hyperbolic angles up to 3 (x_0 <= 10 sqrt(k))
    u = u / u.norm(dim=1, keepdim=True) * torch.rand(40, 1, generator=gen, dtype=dtype) * 3
    u = u * math.sqrt(k)
    x = expmap0(u, k)
    ref = geoopt.Lorentz(k=torch.tensor(k, dtype=dtype))
    torch.testing.assert_close(x, ref.expmap0(u), **CLOSE[dtype])
    assert_on_manifold(x, k, dtype)
    assert check_point(x, k).max() <= TOL[dtype] * max(1.0, k)  # angle <= 3: absolute too
    torch.testing.assert_close(ref.logmap0(x), u, rtol=1e-4 if dtype == torch.float32 else 1e-9,
                               atol=1e-4 if dtype == torch.float32 else 1e-9)
    torch.testing.assert_close(ref.dist0(x), u.norm(dim=1), rtol=1e-4, atol=1e-4)


@DTYPES
@pytest.mark.parametrize("k", [1.0, 0.25])
def test_expmap0_caps_the_radius_and_keeps_the_direction(dtype, k):
    gen = torch.Generator().manual_seed(0)
    u = tangent0(10, 5, 25.0, gen, dtype)
    x = expmap0(u, k)
    assert_on_manifold(x, k, dtype)
    # capped: the point at hyperbolic angle 10, i.e. distance 10 sqrt(k), same direction
    expected = expmap0(u / u.norm(dim=1, keepdim=True) * EXP_MAX_NORM * math.sqrt(k), k)
    torch.testing.assert_close(x, expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)
    assert torch.isclose(x[:, 0], torch.full_like(x[:, 0], math.sqrt(k) * math.cosh(10.0)),
                         rtol=1e-6).all()


def test_expmap0_of_zero_is_the_origin_and_hybonet_lift_formula():
    zero = torch.zeros(3, 5, dtype=torch.float64)
    torch.testing.assert_close(expmap0(zero), origin(3, 5, dtype=torch.float64), rtol=0,
                               atol=1e-9)
    torch.testing.assert_close(expmap0(zero, 4.0), origin(3, 5, k=4.0, dtype=torch.float64),
                               rtol=0, atol=1e-8)
    # HyboNet's lift of a feature row: (cosh|x|, sinh|x| x/|x|)
    f = torch.tensor([[0.0, 0.3, 0.4]], dtype=torch.float64)
    expected = torch.tensor([[math.cosh(0.5), math.sinh(0.5) * 0.6, math.sinh(0.5) * 0.8]],
                            dtype=torch.float64)
    torch.testing.assert_close(expmap0(f), expected, rtol=1e-12, atol=1e-12)


def test_leaky_clamp_passes_a_small_gradient_outside_the_range():
    x = torch.tensor([-1.0, 0.5, 3.0], requires_grad=True)
    y = leaky_clamp(x, 0.0, 1.0)
    assert torch.equal(y, torch.tensor([0.0, 0.5, 1.0]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1e-8, 1.0, 1e-8]))
    # expmap0 of a zero vector has a finite gradient
    u = torch.zeros(2, 4, requires_grad=True)
    expmap0(u).sum().backward()
    assert torch.isfinite(u.grad).all()


# --------------------------------------------------------------------------- expmap
# The float32 maps are checked against geoopt in float64 on the same points, drawn in float64
# (exactly on the manifold) and rounded once, with bounds from their rounding: on the
# hyperboloid a point's coordinates are at most its time x_0, and a Lorentz product of
# points or tangents near x cancels terms of size up to x_0^2 down to a value of size k, so
# it comes with a relative error of about eps x_0^2 / k, which every step downstream of it
# carries. (Fixed tolerances fail for far points: at k = 0.5, x_0 reaches 6 and the error
# 1e-4.) Each bound has a factor 4 over the largest value measured over 300 seeds.
EPS32 = torch.finfo(torch.float32).eps


def assert_rows_within(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor,
                       what: str) -> None:
    """``|actual - expected| <= bound`` entry-wise; ``bound`` is ``(n, 1)``, one per row."""
    ratio = ((actual.double() - expected).abs() / bound).max().item()
    assert ratio <= 1, f"{what}: error {ratio:.3g} times its rounding bound"


def expmap_bound(x: torch.Tensor, v: torch.Tensor, k: float) -> torch.Tensor:
    """Float32 rounding bound of ``expmap(x, v)`` per row, from the float64 ``x``, ``v``.

    ``y = cosh(theta) x + sqrt(k) sinh(theta) u_hat`` sums terms of size up to ``scale =
    cosh(theta) x_0 + sqrt(k) sinh(theta) max|u_hat|``. The angle ``theta = |u|_L / sqrt(k)``
    and ``u_hat = u / |u|_L`` come from a Lorentz norm of a tangent at ``x`` (and ``u`` from
    the re-projection ``v + <x, v>_L x / k``): relative error ~ eps x_0^2 / k each, and
    ``cosh``/``sinh`` turn the angle's into ``theta`` times that. Measured: at most 0.66
    eps scale (1 + theta) x_0^2 / k.
    """
    norm = inner(v, v, keepdim=True).sqrt()
    theta = norm / math.sqrt(k)
    scale = (torch.cosh(theta) * x[:, :1]
             + math.sqrt(k) * torch.sinh(theta) * (v / norm).abs().amax(1, keepdim=True))
    return 4 * EPS32 * scale * (1 + theta) * x[:, :1] ** 2 / k


@DTYPES
@SEEDS
@CURVATURES
def test_expmap_matches_geoopt_below_the_cap_and_round_trips(dtype, seed, k):
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x64 = points(20, 6, gen, f64, k)
    v64 = proju(x64, torch.randn(20, 6, generator=gen, dtype=f64), k)
    v64 = v64 / inner(v64, v64, keepdim=True).sqrt() * torch.rand(20, 1, generator=gen,
                                                                  dtype=f64) * 2
    torch.testing.assert_close(inner(x64, v64), torch.zeros(20, dtype=f64), **CLOSE[f64])
    x, v = x64.to(dtype), v64.to(dtype)
    y = expmap(x, v, k)
    expected = geoopt.Lorentz(k=torch.tensor(k, dtype=f64)).expmap(x64, v64)
    if dtype == torch.float32:
        assert_rows_within(y, expected, expmap_bound(x64, v64, k), f"expmap k={k}")
    else:
        torch.testing.assert_close(y, expected, **CLOSE[dtype])
    assert_on_manifold(y, k, dtype)
    ref = geoopt.Lorentz(k=torch.tensor(k, dtype=dtype))
    if dtype == torch.float64:
        torch.testing.assert_close(ref.logmap(x, y), v, rtol=1e-7, atol=1e-7)
    # the cap: a huge step moves exactly distance 10 sqrt(k)
    far = expmap(x, v * 1e3 / inner(v, v, keepdim=True).sqrt(), k)
    torch.testing.assert_close(ref.dist(x, far), torch.full((20,), 10 * math.sqrt(k), dtype=dtype),
                               rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- centroid
@DTYPES
@SEEDS
@CURVATURES
def test_centroid_of_two_points_is_the_geodesic_midpoint(dtype, seed, k):
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x64, y64 = points(8, 5, gen, f64, k), points(8, 5, gen, f64, k)
    mid = centroid(torch.stack([x64, y64], dim=-2).to(dtype), k=k)
    ref = geoopt.Lorentz(k=torch.tensor(k, dtype=f64))
    geodesic_mid = ref.expmap(x64, 0.5 * ref.logmap(x64, y64))
    if dtype == torch.float32:
        # s = (x + y) / 2 has coordinates up to s_0; <s, s>_L (at most -k) cancels terms of
        # size s_0^2, so the normalisation has relative error ~ eps (1 + s_0^2 / k) on
        # coordinates up to the midpoint's time m_0. Measured: at most 0.6 times that.
        s0 = (x64[:, :1] + y64[:, :1]) / 2
        bound = 4 * EPS32 * geodesic_mid[:, :1] * (1 + s0 ** 2 / k)
        assert_rows_within(mid, geodesic_mid, bound, f"centroid k={k}")
    else:
        torch.testing.assert_close(mid, geodesic_mid, rtol=1e-8, atol=1e-8)
    assert_on_manifold(mid, k, dtype)


@DTYPES
@SEEDS
def test_centroid_with_sparse_row_normalised_weights(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    h = points(12, 6, gen, dtype)
    adj = (torch.rand(12, 12, generator=gen) < 0.3).to(dtype) + torch.eye(12, dtype=dtype)
    adj = adj / adj.sum(1, keepdim=True)
    dense = centroid(h, adj)
    torch.testing.assert_close(centroid(h, adj.to_sparse()), dense, **CLOSE[dtype])
    assert_on_manifold(dense, 1.0, dtype)
    # the normalisation makes any positive row scaling irrelevant
    torch.testing.assert_close(centroid(h, adj * 7.0), dense, **CLOSE[dtype])
    # a row with a single neighbour returns that neighbour
    one = torch.zeros(1, 12, dtype=dtype)
    one[0, 4] = 1
    torch.testing.assert_close(centroid(h, one)[0], h[4], **CLOSE[dtype])
    torch.testing.assert_close(LorentzAgg()(h, adj.to_sparse()), dense, **CLOSE[dtype])


# --------------------------------------------------------------------------- random / manifold
@pytest.mark.parametrize("k", [1.0, 2.0])
def test_random_normal_is_within_distance_1_of_the_origin(k):
    x = random_normal(500, 64, k=k, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    assert_on_manifold(x, k, torch.float64)
    d = geoopt.Lorentz(k=torch.tensor(k, dtype=torch.float64)).dist0(x)
    assert d.max() <= 1 + 1e-9  # the distance is |g|_L whatever k
    # d = 64: |g|_L = sqrt(1 - 2 g_0^2) with g_0^2 ~ 1/64, i.e. about 0.98 (HyboNet measured)
    assert 0.95 < d.mean() < 0.995


def test_lorentz_manifold_uses_the_capped_retraction_and_checks_k():
    manifold = Lorentz(1.0)
    x = manifold.origin(2, 4)
    u = torch.tensor([[0.0, 30.0, 0.0, 0.0], [0.0, 0.0, 0.1, 0.0]])
    y = manifold.retr(x, u)
    assert torch.isclose(y[0, 0], torch.tensor(math.cosh(10.0)), rtol=1e-6)
    torch.testing.assert_close(y[1], expmap0(u[1]))
    assert_on_manifold(y, 1.0, torch.float32)
    with pytest.raises(ValueError, match="k=-1"):
        Lorentz(-1)
    with pytest.raises(ValueError, match="dim=0"):
        manifold.expmap0(u, dim=0)


# --------------------------------------------------------------------------- LorentzLinear
def hybonet_lorentz_linear(layer: LorentzLinear, x: torch.Tensor) -> torch.Tensor:
    """gcn/layers/hyp_layers.py LorentzLinear.forward, transcribed (k = 1, no dropout)."""
    x = layer.linear(x)
    x_narrow = x.narrow(-1, 1, x.shape[-1] - 1)
    time = x.narrow(-1, 0, 1).sigmoid() * layer.scale.exp() + 1.1
    scale = (time * time - 1) / (x_narrow * x_narrow).sum(dim=-1, keepdim=True).clamp_min(1e-8)
    return torch.cat([time, x_narrow * scale.sqrt()], dim=-1)


def test_lorentz_linear_initialisation_is_hybonets():
    torch.manual_seed(0)
    layer = LorentzLinear(40, 16)
    w = layer.linear.weight
    assert torch.equal(w[:, 0], torch.zeros(16))
    assert w[:, 1:].abs().max() <= 0.25 and w[:, 1:].abs().max() > 0.2  # U(-1/4, 1/4)
    assert torch.equal(layer.linear.bias, torch.zeros(16))
    assert layer.scale.item() == pytest.approx(math.log(10)) and layer.scale.requires_grad
    assert not LorentzLinear(4, 3, fixscale=True).scale.requires_grad
    assert LorentzLinear(4, 3, bias=False).linear.bias is None


@DTYPES
@SEEDS
@pytest.mark.parametrize("k", [1.0, 0.5])
def test_lorentz_linear_output_is_on_the_hyperboloid(dtype, seed, k):
    torch.manual_seed(seed)
    layer = LorentzLinear(9, 6, k=k).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # arbitrary weights, not just the initial ones
        layer.linear.weight.normal_(generator=gen)
        layer.linear.bias.normal_(generator=gen)
    x = points(64, 9, gen, dtype, k, radius=5.0)
    y = layer(x)
    assert_on_manifold(y, k, dtype)
    floor = 1.1 * math.sqrt(k)
    assert (y[:, 0] > floor - 1e-6).all() and (y[:, 0] < floor + 10 + 1e-6).all()
    # off-manifold input and an all-zero space output still give finite points
    assert torch.isfinite(layer(torch.randn(5, 9, dtype=dtype) * 100)).all()
    with torch.no_grad():
        layer.linear.weight[1:].zero_()
        layer.linear.bias[1:].zero_()
    assert torch.isfinite(layer(x)).all()


def test_lorentz_linear_equals_the_transcribed_hybonet_forward():
    torch.manual_seed(0)
    layer = LorentzLinear(7, 5)
    with torch.no_grad():
        layer.linear.bias.normal_()
        layer.scale.fill_(1.3)
    x = points(10, 7, torch.Generator().manual_seed(3), torch.float32)
    torch.testing.assert_close(layer(x), hybonet_lorentz_linear(layer, x), rtol=0, atol=0)


def test_lorentz_linear_applies_nonlin_to_the_whole_point_before_dropout():
    seen = []
    layer = LorentzLinear(4, 3, nonlin=lambda x: seen.append(x.clone()) or torch.relu(x))
    x = torch.tensor([[1.5, -1.0, 0.5, 0.2]])
    layer(x)
    assert torch.equal(seen[0], x)
    relu_first = LorentzLinear(4, 3, nonlin=torch.relu)
    relu_first.load_state_dict(layer.state_dict())
    torch.testing.assert_close(relu_first(x), hybonet_lorentz_linear(layer, torch.relu(x)))
    with pytest.raises(ValueError, match="out_features=1"):
        LorentzLinear(4, 1)
    with pytest.raises(ValueError, match="dropout=1.0"):
        LorentzLinear(4, 3, dropout=1.0)


def test_sparse_input_dropout_masks_only_non_zeros_with_dropouts_law():
    p = 0.7
    dropout = SparseInputDropout(p)
    x = torch.zeros(400, 300)
    x[torch.rand(400, 300, generator=torch.Generator().manual_seed(0)) < 0.02] = 3.0
    torch.manual_seed(0)
    out = dropout(x)
    assert out.shape == x.shape
    assert torch.all(out[x == 0] == 0)
    kept = out[x != 0]
    survivors = kept[kept != 0]
    torch.testing.assert_close(survivors, torch.full_like(survivors, 3.0 / (1 - p)))
    share = survivors.numel() / kept.numel()
    n = kept.numel()  # about 2,400 draws: 5 standard deviations of a Bernoulli(0.3) mean
    assert abs(share - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert not torch.equal(dropout(x), out)  # a fresh mask every call
    x[0] = 0.0
    dropout(x)
    x[0, 1] = 5.0  # changed in place after its non-zeros were cached: they must follow
    draws = torch.stack([dropout(x)[0] for _ in range(40)])  # all 40 dropped: p^40 < 1e-6
    assert torch.all(draws[:, [0, *range(2, 300)]] == 0) and draws[:, 1].max() > 0
    dropout.eval()
    assert dropout(x) is x


def test_sparse_input_dropout_falls_back_to_nn_dropout():
    # a dense input, and one that needs a gradient: exactly nn.Dropout (same seed, same mask)
    dense = torch.randn(50, 40)
    sparse_grad = torch.zeros(50, 40)
    sparse_grad[0, :3] = 1.0
    sparse_grad.requires_grad_(True)
    for x in (dense, sparse_grad):
        torch.manual_seed(5)
        ours = SparseInputDropout(0.4)(x)
        torch.manual_seed(5)
        torch.testing.assert_close(ours, nn.Dropout(0.4)(x), rtol=0, atol=0)
    assert isinstance(LorentzLinear(4, 3, dropout=0.5).dropout, SparseInputDropout)


# --------------------------------------------------------------------------- Riemannian Adam
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_hybonet_adam_on_euclidean_params_is_adamw(weight_decay):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(6, 4, generator=gen)
    grads = [torch.randn(6, 4, generator=gen) for _ in range(5)]
    params = [torch.nn.Parameter(start.clone()) for _ in range(3)]
    opts = [HyboNetRiemannianAdam([params[0]], lr=0.05, weight_decay=weight_decay),
            SlotAdamW([params[1]], lr=0.05, weight_decay=weight_decay),
            torch.optim.AdamW([params[2]], lr=0.05, weight_decay=weight_decay)]
    for grad in grads:
        for p, opt in zip(params, opts):
            p.grad = grad.clone()
            opt.step()
        torch.testing.assert_close(params[0], params[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(params[0], params[2], rtol=0, atol=1e-6)
    assert not torch.equal(params[0], start)


def test_geoopt_adam_couples_weight_decay_hybonet_does_not():
    gen = torch.Generator().manual_seed(1)
    start, grad = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    p_geo, p_adam = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    geo = build_riemannian_optimizer([p_geo], "geoopt", lr=0.01, weight_decay=0.5)
    adam = torch.optim.Adam([p_adam], lr=0.01, weight_decay=0.5)  # L2 added to the gradient
    for opt, p in ((geo, p_geo), (adam, p_adam)):
        p.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(p_geo, p_adam, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="kind='sgd'"):
        build_riemannian_optimizer([p_geo], "sgd")


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_hybonet_adam_on_manifold_params_matches_geoopt_and_stays_on_manifold(k):
    manifold = Lorentz(k)
    init = random_normal(4, 5, k=k, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    target = random_normal(4, 5, k=k, generator=torch.Generator().manual_seed(1))
    p_hy = geoopt.ManifoldParameter(init.clone(), manifold=manifold)
    p_geo = geoopt.ManifoldParameter(init.clone(), manifold=manifold)
    hy = HyboNetRiemannianAdam([p_hy], lr=0.05)
    geo = geoopt.optim.RiemannianAdam([p_geo], lr=0.05, stabilize=10)
    for _ in range(30):
        for p, opt in ((p_hy, hy), (p_geo, geo)):
            opt.zero_grad()
            sqdist(p, target, k).sum().backward()
            opt.step()
        torch.testing.assert_close(p_hy, p_geo, rtol=1e-5, atol=1e-5)
        assert_on_manifold(p_hy.detach(), k, torch.float32)
    # it moved toward the target
    assert sqdist(p_hy, target, k).sum() < sqdist(init, target, k).sum() / 4


def test_hybonet_adam_keeps_euclidean_gradients_and_stabilizes_every_n_steps():
    manifold = Lorentz()
    start = random_normal(3, 4, generator=torch.Generator().manual_seed(0))
    point = geoopt.ManifoldParameter(start, manifold=manifold)
    opt = HyboNetRiemannianAdam([point], lr=0.01, stabilize=3)
    calls = []
    opt.stabilize_group = lambda group: calls.append(group["step"])
    for _ in range(7):
        opt.zero_grad()
        point.sum().backward()
        opt.step()
        assert torch.equal(point.grad, torch.ones(3, 4))  # not rewritten in place
    assert calls == [3, 6]
    # stabilize_group itself: projects points and first moments
    opt = HyboNetRiemannianAdam([point], lr=0.01)
    point.grad = torch.ones(3, 4)
    opt.step()
    with torch.no_grad():
        point[:, 0] += 0.5
    opt.state[point]["exp_avg"] += 1.0
    opt.stabilize_group(opt.param_groups[0])
    assert check_point(point.detach()).max() < 1e-5
    assert inner(point.detach(), opt.state[point]["exp_avg"]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="stabilize=0"):
        HyboNetRiemannianAdam([point], stabilize=0)
