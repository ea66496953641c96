"""HyboNet's graph layers: the Lorentz linear map and centroid aggregation.

Each :class:`LorentzLinear` holds its affine map as an ordinary ``nn.Linear`` named
``linear``: that inner layer is what a training method (full, lora, relora, galore, sst and
the SST variants) targets and replaces, by names ending in ``.linear``. Everything around it
(the sigmoid time with its learnable log-scale, the rescaling onto the hyperboloid, dropout,
the nonlinearity) stays as it is, whatever the inner layer becomes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .lorentz import CENTROID_EPS, centroid

# HyboNet's floor of the time coordinate at k = 1; sqrt(k) times it in general, so that
# t^2 - k > 0 (the maintainer's fix for k != 1, reference/hybonet.md section 4.1).
TIME_FLOOR = 1.1
# HyboNet's initial exp(scale): the time starts in (1.1, 11.1).
INIT_SCALE = 10.0


def _check_curvature(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ValueError(f"curvature k={k!r} must be a number > 0")
    return float(k)


class LorentzLinear(nn.Module):
    """HyboNet's Lorentz linear layer (graph version), exactly as in ``gcn/layers/hyp_layers.py``.

    Forward, for ``x`` on the hyperboloid::

        x = nonlin(x)                         # whole vector, time included; if given
        y = linear(dropout(x))                # any map (in+1 ambient) -> (out+1 ambient)
        t = sigmoid(y_0) * exp(scale) + 1.1 sqrt(k)
        out = (t, y_s * sqrt((t^2 - k) / max(|y_s|^2, 1e-8)))

    so ``<out, out>_L = -k`` exactly (up to rounding) for any ``linear``: row 0 sets the
    distance from the origin, the other rows only the direction.

    Initialisation (HyboNet's): ``W ~ U(-1/sqrt(out), 1/sqrt(out))`` with column 0 (the input
    time coordinate) set to 0, bias 0, ``scale = log 10``.

    Args:
        in_features: ambient input size (time included).
        out_features: ambient output size (time included), >= 2.
        bias: give ``linear`` a bias.
        dropout: input dropout probability.
        nonlin: elementwise function applied to the input point first, or None.
        k: curvature parameter (HyboNet: 1).
        init_scale: initial ``exp(scale)`` (HyboNet: 10).
        fixscale: freeze ``scale``.

    Parameters: ``linear.weight`` (out, in), ``linear.bias`` (out), ``scale`` (scalar).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dropout: float = 0.0, nonlin: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 k: float = 1.0, init_scale: float = INIT_SCALE, fixscale: bool = False):
        super().__init__()
        if in_features < 1 or out_features < 2:
            raise ValueError(f"in_features={in_features} must be >= 1 and out_features="
                             f"{out_features} >= 2 (time plus at least one space coordinate)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        self.in_features, self.out_features = in_features, out_features
        self.k = _check_curvature(k)
        self.nonlin = nonlin
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=not fixscale)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HyboNet's init: uniform(+-1/sqrt(out)), input-time column zeroed, bias zero."""
        bound = 1.0 / math.sqrt(self.out_features)
        nn.init.uniform_(self.linear.weight, -bound, bound)
        self.linear.weight[:, 0] = 0
        if self.linear.bias is not None:
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)`` on the hyperboloid."""
        if self.nonlin is not None:
            x = self.nonlin(x)
        y = self.linear(self.dropout(x))
        space = y[..., 1:]
        time = y[..., 0:1].sigmoid() * self.scale.exp() + TIME_FLOOR * math.sqrt(self.k)
        ratio = (time * time - self.k) / (space * space).sum(-1, keepdim=True).clamp_min(
            CENTROID_EPS)
        return torch.cat([time, space * ratio.sqrt()], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k:g}"


class LorentzAgg(nn.Module):
    """Neighbourhood aggregation as a Lorentz centroid (HyboNet's default, ``use_att=0``).

    ``out_i = sqrt(k) s_i / sqrt(max(|<s_i, s_i>_L|, 1e-8))`` with ``s = A h`` for the
    row-normalised adjacency ``A = D^-1 (adj + I)`` (non-negative weights, so ``s_i`` is
    timelike and ``out_i`` lies on the hyperboloid). No activation follows.

    Args:
        k: curvature parameter.
    """

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = _check_curvature(k)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``h`` (N, d) points, ``adj`` (N, N) sparse COO or dense -> (N, d) points."""
        return centroid(h, adj, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k:g}"


class LorentzGraphConvolution(nn.Module):
    """One HyboNet graph layer: :class:`LorentzLinear` then :class:`LorentzAgg`.

    Submodules are ``transform`` (the LorentzLinear, whose inner ``transform.linear`` methods
    replace) and ``agg``.

    Args:
        in_features, out_features: ambient sizes (time included).
        bias, dropout, nonlin, k: passed to :class:`LorentzLinear` (``k`` also to the
            aggregation).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dropout: float = 0.0, nonlin: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 k: float = 1.0):
        super().__init__()
        self.transform = LorentzLinear(in_features, out_features, bias=bias, dropout=dropout,
                                       nonlin=nonlin, k=k)
        self.agg = LorentzAgg(k)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``x`` (N, in_features) points, ``adj`` (N, N) -> (N, out_features) points."""
        return self.agg(self.transform(x), adj)
