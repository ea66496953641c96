"""Hyperbolic (Lorentz-model) building blocks on geoopt, as HyboNet uses them.

``lorentz``: pure functions (Minkowski inner products, squared Lorentzian distance, capped
exponential maps, projection, Lorentz centroid) and the thin :class:`Lorentz` manifold;
``layers``: :class:`LorentzLinear` (graph version) and :class:`LorentzLinearMT` (translation
version), each with an inner ``nn.Linear`` named ``linear`` (the part training methods
replace), and centroid aggregation; ``optim``: HyboNet's Riemannian Adam and the
optimizer pair (method's own + Riemannian) a hyperbolic model trains with, as one
``torch.optim.Optimizer`` (:class:`CombinedOptimizer`).
"""

from .layers import LorentzAgg, LorentzGraphConvolution, LorentzLinear, LorentzLinearMT
from .lorentz import (
    EXP_MAX_NORM,
    Lorentz,
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
from .optim import (
    RIEMANNIAN_KINDS,
    CombinedOptimizer,
    HyboNetRiemannianAdam,
    build_hyperbolic_optimizer,
    build_riemannian_optimizer,
    manifold_parameters,
)

__all__ = [
    "EXP_MAX_NORM",
    "RIEMANNIAN_KINDS",
    "CombinedOptimizer",
    "HyboNetRiemannianAdam",
    "Lorentz",
    "LorentzAgg",
    "LorentzGraphConvolution",
    "LorentzLinear",
    "LorentzLinearMT",
    "build_hyperbolic_optimizer",
    "build_riemannian_optimizer",
    "centroid",
    "check_point",
    "cinner",
    "expmap",
    "expmap0",
    "inner",
    "manifold_parameters",
    "origin",
    "pairwise_sqdist",
    "project",
    "proju",
    "random_normal",
    "sqdist",
]
