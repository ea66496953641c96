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

from ..linear import apply_linear
from ..sparse_rows import SparseRows
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


class SparseInputDropout(nn.Dropout):
    """``nn.Dropout`` that draws the mask only at the non-zero entries of a constant input.

    Dropping a zero leaves a zero, so the output has exactly ``nn.Dropout``'s distribution,
    but a lifted bag-of-words matrix (Cora: 2,708 x 1,434, about 1.3% non-zero) needs
    ``nnz`` random draws instead of ``N F``: the dense mask was about half of a Cora training
    step. The random stream differs from ``nn.Dropout``'s, so a seed draws other masks.

    Inputs that require a gradient, and inputs with more than ``DENSE_SHARE`` of non-zero
    entries, go to ``nn.Dropout`` unchanged (its gradient at a zero entry is the mask scale,
    which the sparse path would not reproduce). A :class:`~sparse_spectral.sparse_rows.
    SparseRows` input gets the same mask (its values are in the same row-major order) and
    stays sparse.
    """

    DENSE_SHARE = 0.25

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        # (input, its version, its non-zero flat indices): a graph's lifted features are one
        # fixed tensor, and finding its non-zeros costs as much as a few mask draws.
        self._nonzero_cache: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def _nonzero(self, x: torch.Tensor) -> torch.Tensor:
        cache = self._nonzero_cache
        if cache is not None and cache[0] is x and cache[1] == x._version:
            return cache[2]
        index = x.reshape(-1).nonzero().squeeze(1)
        self._nonzero_cache = (x, x._version, index)
        return index

    def forward(self, x: torch.Tensor | SparseRows) -> torch.Tensor | SparseRows:
        """``(...)`` -> ``(...)``, the same shape (and kind)."""
        if isinstance(x, SparseRows):
            if not self.training or self.p == 0.0:
                return x
            keep = torch.rand(x.values.numel(), device=x.device) >= self.p
            return x.with_values(x.values * keep / (1.0 - self.p))
        if not self.training or self.p == 0.0 or x.requires_grad:
            return super().forward(x)
        flat = x.reshape(-1)
        index = self._nonzero(x)
        if index.numel() > self.DENSE_SHARE * flat.numel():
            return super().forward(x)
        keep = torch.rand(index.numel(), device=x.device) >= self.p
        out = torch.zeros_like(flat)
        out[index] = flat[index] * keep / (1.0 - self.p)
        return out.view_as(x)


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
        dropout: input dropout probability (:class:`SparseInputDropout`).
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
        self.dropout = SparseInputDropout(dropout)
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

    def forward(self, x: torch.Tensor | SparseRows) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)`` on the hyperboloid.

        ``x`` may be :class:`~sparse_spectral.sparse_rows.SparseRows` (the lifted features
        of a bag-of-words graph): the inner linear then runs sparse where it can.
        """
        if self.nonlin is not None:
            x = self.nonlin(x if isinstance(x, torch.Tensor) else x.to_dense())
        y = apply_linear(self.linear, self.dropout(x))
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


# --------------------------------------------------------------------------- translation
# HyboNet's MT LorentzLinear initialises its log-scale to 2.3 directly (exp(2.3) ~ 9.97).
MT_INIT_LOG_SCALE = 2.3
# HyboNet's MT weight init: U(-0.02, 0.02).
MT_INIT_BOUND = 0.02
RESIDUAL_MODES = ("code", "paper")


class LorentzLinearMT(nn.Module):
    """HyboNet's Lorentz linear layer, translation version (``mt/onmt/modules/hyper_nets.py``).

    Forward, for ``x`` on the hyperboloid and an optional ``residual`` point::

        y = linear(dropout(x))                      # x flattened over heads first if merge
        y = y + residual                            # "code": the whole vector, time included
        y = y.view(..., heads, d_out / heads)       # Q/K/V: one point per head
        t = sigmoid(y_0) * exp(scale) + 1.1 sqrt(k)
        out = (t, y_s * sqrt((t^2 - k) / max(|y_s|^2, space_eps)))

    ``residual="paper"`` follows the paper's Eq. 7 instead (issue #7): the time comes from
    ``linear(x)`` alone and only the residual's space part is added, ``y_s + residual_s``.
    The official code (kept by its maintainer "for reproducibility") is ``"code"``.

    Differences from the graph :class:`LorentzLinear` (reference/hybonet.md section 3.1):
    the second argument is a residual, not a bias; the output (``heads > 0``, not ``merge``)
    or the input (``merge``) is split into ``heads`` points of ``d / heads`` coordinates; no
    floor on ``|y_s|^2`` by default (``space_eps = 0``: an all-zero space part gives inf/NaN,
    as in the official code); ``W ~ U(-0.02, 0.02)`` with input columns ``0, s, 2s, ...``
    zeroed for ``s = in / heads`` (``heads > 0``) or ``s = in``; ``scale`` starts at 2.3.

    Args:
        in_features: ambient input size (all heads together when ``merge``).
        out_features: ambient output size (all heads together when split).
        bias: give ``linear`` a bias.
        dropout: input dropout probability.
        heads: HyboNet's ``head_num``: 0 for one point; else the number of heads.
        merge: the input is ``(..., heads, in / heads)`` and is flattened first (the layer
            that merges attention heads); otherwise ``heads > 0`` splits the output.
        k: curvature parameter (HyboNet: 1).
        residual: ``"code"`` (official) or ``"paper"`` (Eq. 7), see above.
        space_eps: floor of ``|y_s|^2`` (official MT code: 0, i.e. none; graph version 1e-8).

    Parameters: ``linear.weight`` (out, in), ``linear.bias`` (out), ``scale`` (scalar).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dropout: float = 0.0, heads: int = 0, merge: bool = False, k: float = 1.0,
                 residual: str = "code", space_eps: float = 0.0):
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 0:
            raise ValueError(f"heads={heads!r} must be an int >= 0")
        if merge and heads < 1:
            raise ValueError(f"merge=True needs heads >= 1, got heads={heads}")
        split = out_features if heads and not merge else in_features
        if heads and (split % heads or split // heads < 2):
            raise ValueError(f"heads={heads} must divide {'in' if merge else 'out'}_features="
                             f"{split} into points of >= 2 coordinates")
        if in_features < 1 or (out_features < 2):
            raise ValueError(f"in_features={in_features} must be >= 1 and out_features="
                             f"{out_features} >= 2 (time plus at least one space coordinate)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"residual={residual!r} is unknown; allowed: "
                             f"{', '.join(RESIDUAL_MODES)}")
        if not space_eps >= 0:
            raise ValueError(f"space_eps={space_eps!r} must be >= 0")
        self.in_features, self.out_features = in_features, out_features
        self.heads, self.merge = heads, bool(merge)
        self.k = _check_curvature(k)
        self.residual_mode, self.space_eps = residual, float(space_eps)
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.tensor(MT_INIT_LOG_SCALE))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HyboNet's MT init: U(-0.02, 0.02), input columns 0, s, 2s, ... zeroed, bias 0.

        For Q/K/V (``heads > 0``, split output) the zeroed columns 16, 32, 48 (at d = 64,
        H = 4) are space coordinates of the input point, not times: the official quirk.
        """
        nn.init.uniform_(self.linear.weight, -MT_INIT_BOUND, MT_INIT_BOUND)
        step = self.in_features // self.heads if self.heads else self.in_features
        self.linear.weight[:, ::step] = 0
        if self.linear.bias is not None:
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Map points, optionally adding a residual point before the renormalisation.

        Args:
            x: ``(..., in_features)``, or ``(..., heads, in_features / heads)`` when merging.
            residual: ``(..., out_features)`` or None. Not allowed with split heads.

        Returns:
            ``(..., out_features)`` points, or ``(..., heads, out_features / heads)`` points
            (one per head) when the output is split.
        """
        if self.merge:
            x = x.flatten(-2)
        y = self.linear(self.dropout(x))
        if self.heads and not self.merge:
            if residual is not None:
                raise ValueError("a residual cannot be added to a head-split output")
            y = y.unflatten(-1, (self.heads, self.out_features // self.heads))
        time_logit = y[..., 0:1]
        if residual is not None:
            if self.residual_mode == "code":
                y = y + residual
                time_logit = y[..., 0:1]
            else:  # paper: time from the map alone, residual only in space
                y = torch.cat([y[..., 0:1], y[..., 1:] + residual[..., 1:]], dim=-1)
        space = y[..., 1:]
        time = time_logit.sigmoid() * self.scale.exp() + TIME_FLOOR * math.sqrt(self.k)
        norm_sq = (space * space).sum(-1, keepdim=True)
        if self.space_eps > 0:
            norm_sq = norm_sq.clamp_min(self.space_eps)
        return torch.cat([time, space * ((time * time - self.k) / norm_sq).sqrt()], dim=-1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"heads={self.heads}, merge={self.merge}, residual={self.residual_mode!r}, "
                f"k={self.k:g}")
