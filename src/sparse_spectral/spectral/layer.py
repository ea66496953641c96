"""``SpectralLinear``: a linear layer stored as its SVD, trained r vector pairs at a time."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from .._util.shards import (
    check_unsharded,
    is_sharded,
    local,
    local_slice,
    norms,
    sum_over_shards_,
)
from ..linear import FixedOperand, is_conv1d, linear_weight
from .cost import choose_mode
from .function import (
    ComposedWeightCache,
    SpectralWeightFunction,
    _autocast_off,
    spectral_linear,
)
from .optim import reset_param_state, reset_slots


def _is_fsdp(module: nn.Module) -> bool:
    """Whether ``fully_shard`` manages ``module`` (its class is then an ``FSDPModule``)."""
    return type(module).__name__.startswith("FSDP") and _fsdp_module_class() is not None \
        and isinstance(module, _fsdp_module_class())


@functools.cache
def _fsdp_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a build without distributed
        return None
    return FSDPModule


def _check_rank(rank: int, m: int, n: int) -> None:
    k = min(m, n)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= k:
        raise ValueError(f"rank={rank!r} is out of range: it must be an int in [1, min(m, n) = {k}]"
                         f" for a layer of shape (m={m}, n={n})")


def thin_svd(weight: torch.Tensor, dtype: torch.dtype = torch.float32):
    """Thin SVD ``W = U diag(s) Vh`` computed in ``dtype``.

    Args:
        weight: ``(m, n)``.
        dtype: computation dtype (float32, or float64 for small, precision-critical layers).

    Returns:
        ``U (m, k)``, ``s (k,)``, ``Vh (k, n)`` in ``dtype`` with ``k = min(m, n)``.
    """
    U, s, Vh = torch.linalg.svd(weight.detach().to(dtype), full_matrices=False)
    return U, s, Vh


class SpectralLinear(nn.Module):
    """A linear map ``y = U diag(s) Vh x + b`` trained with Sparse Spectral Training.

    Parameters (trainable): ``s`` (k,), ``U_active`` (m, r), ``Vh_active`` (r, n), ``bias``.
    Frozen parameters (``requires_grad=False``, so DDP never re-broadcasts them):
    ``U_frozen`` (m, k - r) and ``Vh_frozen`` (k - r, n). Buffers: ``idx`` (r,) and
    ``frozen_idx`` (k - r,), the singular indices each stored vector stands for (together a
    permutation of ``range(k)``); ``s`` is indexed by singular index.

    Every singular vector is stored exactly once (SPEC section 4): a new selection is
    swapped in by exchanging columns between the frozen and the active tensors, like a
    time-sharing scheduler. All state changes (:meth:`normalize_`, :meth:`swap_`,
    :meth:`resvd_`) copy in place into tensors of fixed shape, so parameter objects, shapes
    and optimizer param groups never change.

    Args:
        U: ``(m, k)`` left singular vectors.
        s: ``(k,)`` singular values.
        Vh: ``(k, n)`` right singular vectors.
        rank: ``r``, the number of vector pairs trained at a time.
        bias: optional ``(m,)`` bias.
        enhanced: use the enhanced gradient for the active vectors.
        conv1d: the layer came from GPT-2's ``Conv1D``; :meth:`to_linear` returns one.
        all_singular_values: train every singular value (SST); ``False`` trains only the
            sampled ones (ablation), whose optimizer state then restarts per index.
        forward_mode: ``"auto"`` (per call, the cheaper of the two by
            :func:`~sparse_spectral.spectral.cost.choose_mode` for the call's token count),
            ``"factored"`` or ``"composed"``; all give the same results up to rounding.
        frozen_dtype: store ``U_frozen``/``Vh_frozen`` in this floating dtype (e.g.
            ``torch.bfloat16``: half their bytes) while ``s``, the active vectors and their
            gradients and optimizer state keep the factors' dtype; None: the same dtype.
            A vector leaving the active set is rounded to it (:meth:`swap_`, :meth:`resvd_`);
            products use the frozen factors cast to the compute dtype. ``module.to(dtype)``
            casts everything else but keeps this dtype (:meth:`_apply`).
    """

    def __init__(self, U: torch.Tensor, s: torch.Tensor, Vh: torch.Tensor, rank: int,
                 bias: torch.Tensor | None = None, enhanced: bool = True, conv1d: bool = False,
                 all_singular_values: bool = True, forward_mode: str = "auto",
                 frozen_dtype: torch.dtype | None = None):
        super().__init__()
        m, k = U.shape
        n = Vh.shape[1]
        if s.shape != (k,) or Vh.shape != (k, n):
            raise ValueError(f"inconsistent factors: U {tuple(U.shape)}, s {tuple(s.shape)}, "
                             f"Vh {tuple(Vh.shape)}")
        _check_rank(rank, m, n)
        self.out_features, self.in_features, self.k, self.rank = m, n, k, rank
        self.enhanced = enhanced
        self.conv1d = conv1d
        self.all_singular_values = all_singular_values
        choose_mode(1, m, n, k, rank, forward_mode)  # validates the setting
        self.forward_mode = forward_mode
        if frozen_dtype is not None and not (isinstance(frozen_dtype, torch.dtype)
                                             and frozen_dtype.is_floating_point):
            raise ValueError(f"frozen_dtype={frozen_dtype!r} must be None or a floating "
                             "torch.dtype (e.g. torch.bfloat16)")
        self.frozen_dtype = frozen_dtype
        frozen = U.dtype if frozen_dtype is None else frozen_dtype
        # The first r singular pairs start active; swap_() picks the real selection.
        self.U_frozen = nn.Parameter(U[:, rank:].detach().to(frozen, copy=True).contiguous(),
                                     requires_grad=False)
        self.Vh_frozen = nn.Parameter(Vh[rank:].detach().to(frozen, copy=True).contiguous(),
                                      requires_grad=False)
        self.s = nn.Parameter(s.detach().clone())
        self.U_active = nn.Parameter(U[:, :rank].detach().clone().contiguous())
        self.Vh_active = nn.Parameter(Vh[:rank].detach().clone().contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("idx", torch.arange(rank, device=U.device))
        self.register_buffer("frozen_idx", torch.arange(rank, k, device=U.device))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_linear(cls, linear: nn.Module, rank: int, enhanced: bool = True,
                    svd_dtype: torch.dtype = torch.float32, init: str = "svd",
                    generator: torch.Generator | None = None,
                    all_singular_values: bool = True, forward_mode: str = "auto",
                    frozen_dtype: torch.dtype | None = None) -> SpectralLinear:
        """Convert an ``nn.Linear`` (or GPT-2 ``Conv1D``).

        Args:
            init: ``"svd"`` keeps the layer's function exactly (the SVD runs in
                ``svd_dtype``; factors are stored in the layer's dtype). ``"random"`` (the
                paper's ablation) keeps the singular values but draws random orthonormal
                ``U`` and ``Vh`` from ``generator``.
            frozen_dtype: dtype of the frozen factors (see the class); None: the layer's.
        """
        conv1d = is_conv1d(linear)
        weight = linear_weight(linear)  # (m, n)
        _check_rank(rank, *weight.shape)
        if init not in ("svd", "random"):
            raise ValueError(f"init={init!r} is unknown; allowed: svd, random")
        U, s, Vh = thin_svd(weight, svd_dtype)
        if init == "random":
            U = torch.linalg.qr(torch.randn(U.shape, generator=generator, dtype=svd_dtype))[0]
            Vh = torch.linalg.qr(torch.randn(Vh.t().shape, generator=generator,
                                             dtype=svd_dtype))[0].t()
        dtype, device = linear.weight.dtype, linear.weight.device
        U, s, Vh = (t.to(device=device, dtype=dtype) for t in (U, s, Vh))
        return cls(U, s, Vh, rank, bias=linear.bias, enhanced=enhanced, conv1d=conv1d,
                   all_singular_values=all_singular_values, forward_mode=forward_mode,
                   frozen_dtype=frozen_dtype)

    @classmethod
    def from_shape(cls, in_features: int, out_features: int, rank: int, bias: bool = True,
                   init: Callable[[torch.Tensor], object] | None = None,
                   enhanced: bool = True, dtype: torch.dtype = torch.float32,
                   device=None) -> SpectralLinear:
        """Build from shapes: initialise a dense ``(out, in)`` weight, then take its SVD.

        Args:
            init: in-place initialiser for the dense weight (e.g. ``nn.init.xavier_uniform_``);
                default: ``nn.Linear``'s own initialisation.
        """
        linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype, device=device)
        if init is not None:
            with torch.no_grad():
                init(linear.weight)
        return cls.from_linear(linear, rank, enhanced=enhanced)

    # ------------------------------------------------------------------ forward / views
    accepts_operands = True  # fixed (T, n) operands too: see sparse_spectral.linear

    #: In training, reuse the composed ``W`` across calls while the factors are unchanged
    #: (the micro-batches of one optimizer step; :class:`~.function.ComposedWeightCache`).
    #: Never in traced calls (``torch.compile``) nor where ``fully_shard`` manages the layer
    #: itself; :func:`~sparse_spectral.training.fsdp.shard_model` sets it False on every
    #: layer (FSDP2 re-gathers the factors into buffers it may reuse). Set it False before
    #: your own ``fully_shard`` of blocks holding these layers.
    reuse_composed_weight = True

    def forward(self, x: torch.Tensor | FixedOperand) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``; a fixed operand ``(T, n) -> (T, m)``."""
        reuse = (self.training and self.reuse_composed_weight
                 and not torch.compiler.is_compiling() and not _is_fsdp(self))
        return spectral_linear(x, self.U_frozen, self.Vh_frozen, self.s, self.U_active,
                               self.Vh_active, self.idx, self.frozen_idx, self.bias,
                               self.enhanced, self.all_singular_values, mode=self.mode_for(x),
                               weight_cache=self._weight_cache if reuse else None)

    @property
    def _weight_cache(self) -> ComposedWeightCache:
        cache = self.__dict__.get("_composed_weight_cache")
        if cache is None:  # created on first use: layers built before this attribute load too
            cache = self.__dict__["_composed_weight_cache"] = ComposedWeightCache()
        return cache

    def release_composed_weight(self) -> None:
        """Drop the kept composed ``W`` (SST's ``after_step`` does, once per step)."""
        self._weight_cache.clear()

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, read-only, in the replaced module's layout (for code that reads it).

        ``(out, in) = (m, n)`` as ``nn.Linear`` stores it, or ``(n, m)`` for a layer that
        was a GPT-2 ``Conv1D``, in the factors' dtype (autocast off). Some models read a
        linear layer's ``.weight`` for its dtype (T5's feed-forward reads ``wo.weight`` on
        every call) or compute with it (``nn.MultiheadAttention`` passes ``out_proj.weight``
        to its functional form). It is differentiable with SST's own gradients
        (:class:`~sparse_spectral.spectral.function.SpectralWeightFunction`), so such
        a model trains as it would through :meth:`forward`.

        Cost: every read composes ``U_eff diag(s) Vh_eff``, ``m n k`` multiply-adds and a
        new ``(m, n)`` tensor (and a backward through it, a transient ``(m, n)`` gradient).
        Training and inference go through :meth:`forward`, which picks the cheaper
        evaluation per call; this is for compatibility, not a fast path. It is a property:
        not a parameter, not in the state_dict, and it cannot be assigned.
        """
        W = SpectralWeightFunction.apply(self.U_frozen, self.Vh_frozen, self.s,
                                         self.U_active, self.Vh_active, self.idx,
                                         self.frozen_idx, self.enhanced,
                                         self.all_singular_values)
        return W.t() if self.conv1d else W

    def mode_for(self, x: torch.Tensor | FixedOperand) -> str:
        """The evaluation (``"factored"`` or ``"composed"``) used for input ``x (..., n)``."""
        tokens = math.prod(x.shape[:-1])
        return choose_mode(tokens, self.out_features, self.in_features, self.k, self.rank,
                           self.forward_mode)

    @torch.no_grad()
    def effective_factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``U_eff (m, k)``, ``s (k,)``, ``Vh_eff (k, n)``: every pair at its singular index.

        In the active vectors' dtype (frozen factors stored in another dtype are upcast).
        """
        U, Vh = self._stacked_factors()
        return U, self.s.detach().clone(), Vh

    @torch.no_grad()
    def _stacked_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``U_eff (m_loc, k)`` and ``Vh_eff (k, n_loc)`` of this rank's shards (the whole
        factors unless FSDP2 shards them), in the active vectors' dtype."""
        ua, uf, va, vf = (local(t) for t in (self.U_active, self.U_frozen, self.Vh_active,
                                             self.Vh_frozen))
        U = ua.new_empty(ua.shape[0], self.k).index_copy_(1, self.idx, ua)
        U.index_copy_(1, self.frozen_idx, uf.to(U.dtype))
        Vh = va.new_empty(self.k, va.shape[1]).index_copy_(0, self.idx, va)
        Vh.index_copy_(0, self.frozen_idx, vf.to(Vh.dtype))
        return U, Vh

    @torch.no_grad()
    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W = U_eff diag(s) Vh_eff``, shape ``(m, n)``, composed in ``dtype``.

        Autocast stays off here, so ``dtype`` holds even inside an autocast region (a
        re-SVD of a bf16-rounded ``W`` would lose what the fp32 factors hold).
        """
        U, s, Vh = (t.to(dtype) for t in self.effective_factors())
        with _autocast_off(U.device.type):
            return (U * s) @ Vh

    @torch.no_grad()
    def to_linear(self) -> nn.Module:
        """The equivalent dense ``nn.Linear`` (or ``Conv1D``): merged in float32, cast once."""
        dtype, device = self.s.dtype, self.s.device
        weight = self.dense_weight(torch.float32).to(dtype)
        has_bias = self.bias is not None
        if self.conv1d:
            from transformers.pytorch_utils import Conv1D

            dense = Conv1D(self.out_features, self.in_features).to(device=device, dtype=dtype)
            dense.weight.copy_(weight.t())
            if has_bias:
                dense.bias.copy_(self.bias)
            else:  # Conv1D always has a bias; a zero one is equivalent.
                dense.bias.zero_()
            return dense
        dense = nn.Linear(self.in_features, self.out_features, bias=has_bias,
                          device=device, dtype=dtype)
        dense.weight.copy_(weight)
        if has_bias:
            dense.bias.copy_(self.bias)
        return dense

    def _apply(self, fn, recurse=True):
        """``nn.Module._apply`` (``to``, ``float``, ``cuda``, ...), keeping ``frozen_dtype``.

        A cast of the whole model (``model.to(torch.float32)``, pure bf16's
        ``model.to(torch.bfloat16)``) thus never silently up- or downcasts frozen factors
        stored in their own dtype; they pass through the new dtype transiently.
        """
        super()._apply(fn, recurse)
        if self.frozen_dtype is not None:
            for p in (self.U_frozen, self.Vh_frozen):
                if p.dtype != self.frozen_dtype:
                    p.data = p.data.to(self.frozen_dtype)
        return self

    # ------------------------------------------------------------------ SST state changes
    @torch.no_grad()
    def _exchange(self, slots: torch.Tensor, columns: torch.Tensor) -> None:
        """Swap active ``slots`` with frozen ``columns`` (vectors and their indices).

        Frozen factors in a lower ``frozen_dtype`` round the leaving vectors to it (the
        saving's inherent cost); the entering ones are upcast exactly. FSDP2 shards (slot
        dimension unsharded: U by rows, Vh by columns) exchange locally, with no collective.
        """
        for active, frozen, dim in ((self.U_active, self.U_frozen, 1),
                                    (self.Vh_active, self.Vh_frozen, 0)):
            for t in (active, frozen):
                check_unsharded(t, dim, "SpectralLinear.swap_")
            active, frozen = local(active), local(frozen)
            leaving = active.index_select(dim, slots)
            active.index_copy_(dim, slots, frozen.index_select(dim, columns).to(active.dtype))
            frozen.index_copy_(dim, columns, leaving.to(frozen.dtype))
        leaving_idx = self.idx.index_select(0, slots)
        self.idx.index_copy_(0, slots, self.frozen_idx.index_select(0, columns))
        self.frozen_idx.index_copy_(0, columns, leaving_idx)

    @torch.no_grad()
    def normalize_(self) -> None:
        """After an optimizer step: ``s >= 0`` and unit-norm active vectors."""
        normalize_layers_([self])

    @torch.no_grad()
    def swap_(self, new_idx: torch.Tensor, optimizer=None) -> torch.Tensor:
        """Make ``new_idx`` the active set; return the slots whose vector changed.

        Indices already active stay in their slot and keep their optimizer state; the
        other slots exchange their (trained) vectors with the frozen columns holding the
        remaining new indices (ascending), and their moments and step counters restart.

        Args:
            new_idx: ``(r,)`` distinct indices in ``[0, k)``.
            optimizer: optimizer holding the state of ``U_active``/``Vh_active``, or None.

        Returns:
            int64 tensor of the changed slot positions.
        """
        new_idx = new_idx.detach().to("cpu", torch.int64)
        if new_idx.shape != (self.rank,) or new_idx.unique().numel() != self.rank:
            raise ValueError(f"new_idx must hold {self.rank} distinct indices, "
                             f"got {new_idx.tolist()}")
        if new_idx.min() < 0 or new_idx.max() >= self.k:
            raise ValueError(f"indices must lie in [0, {self.k}), got {new_idx.tolist()}")
        old = self.idx.cpu()
        kept = torch.isin(old, new_idx)
        incoming = new_idx[~torch.isin(new_idx, old)].sort().values
        slots = torch.nonzero(~kept).flatten()
        leaving = old[~kept]
        column_of = torch.empty(self.k, dtype=torch.int64)
        column_of[self.frozen_idx.cpu()] = torch.arange(self.k - self.rank)
        device = self.idx.device
        self._exchange(slots.to(device), column_of[incoming].to(device))
        reset_slots(optimizer, self.U_active, slots, dim=1)
        reset_slots(optimizer, self.Vh_active, slots, dim=0)
        if not self.all_singular_values:
            # Only sampled values train: a value that leaves must not keep drifting on its
            # momentum, and one that enters starts a fresh Adam.
            reset_slots(optimizer, self.s, torch.cat([leaving, incoming]), dim=0)
        return slots

    @torch.no_grad()
    def resvd_(self, optimizer=None, svd_dtype: torch.dtype = torch.float32) -> None:
        """Re-decompose ``U_eff diag(s) Vh_eff`` and restart all factor moments.

        Restores orthonormal factors that vector updates erode. Every stored vector is
        replaced by the new factors' vector of the same singular index; callers normally
        draw a new selection right after (:meth:`swap_`). ``W`` is composed in
        ``svd_dtype`` from every factor (frozen ones upcast); the new frozen vectors are
        rounded to ``frozen_dtype`` when it is lower.

        Under FSDP2 (DTensor factors) no rank gathers ``W``: see :meth:`_resvd_sharded`.
        """
        if is_sharded(self.U_active):
            self._resvd_sharded(optimizer, svd_dtype)
            return
        W = self.dense_weight(svd_dtype)
        U, s, Vh = thin_svd(W, svd_dtype)
        self.s.copy_(s)
        for indices, left, right in ((self.idx, self.U_active, self.Vh_active),
                                     (self.frozen_idx, self.U_frozen, self.Vh_frozen)):
            left.copy_(U.index_select(1, indices))
            right.copy_(Vh.index_select(0, indices))
        reset_param_state(optimizer, [self.s, self.U_active, self.Vh_active])

    @torch.no_grad()
    def _resvd_sharded(self, optimizer, svd_dtype: torch.dtype, owner: int = 0) -> None:
        """Re-SVD of FSDP2-sharded factors (U by rows, Vh by columns) without gathering ``W``.

        Cholesky-QR: with the Gram matrices ``G_U = U^T U = R_U^T R_U`` and
        ``G_V = Vh Vh^T = R_V^T R_V`` (k x k, all-reduced from the shards),
        ``W = (U R_U^-1) C (Vh^T R_V^-1)^T`` with the core ``C = R_U diag(s) R_V^T``; the SVD
        ``C = Uc Sc Vc^T`` gives ``U' = U R_U^-1 Uc`` and ``Vh' = Vc^T R_V^-T Vh``, applied to
        each rank's own rows (columns). Communication: two k x k all-reduces and one
        broadcast of ``Uc, Sc, Vc`` from ``owner`` (one rank decomposes, so every rank
        applies bitwise the same rotation). The Grams and the core are in float64: U and Vh
        stay close to orthonormal, so Cholesky is well conditioned.
        """
        import torch.distributed as dist

        U, Vh = self._stacked_factors()  # (m_loc, k), (k, n_loc)
        f64 = torch.float64
        gram_u = sum_over_shards_(U.to(f64).t() @ U.to(f64), self.U_active, 0)
        gram_v = sum_over_shards_(Vh.to(f64) @ Vh.to(f64).t(), self.Vh_active, 1)
        r_u, info_u = torch.linalg.cholesky_ex(gram_u, upper=True)
        r_v, info_v = torch.linalg.cholesky_ex(gram_v, upper=True)
        if int(info_u) or int(info_v):
            raise RuntimeError("re-SVD under FSDP2: the stored singular vectors are no longer "
                               "linearly independent (Cholesky of their Gram matrix failed); "
                               "re-SVD more often (smaller iterations_per_round)")
        s = self.s.full_tensor().to(f64)
        k = self.k
        group = self.U_active.device_mesh.get_group(0)
        uc = torch.empty(k, k, dtype=f64, device=U.device)
        sc = torch.empty(k, dtype=f64, device=U.device)
        vch = torch.empty(k, k, dtype=f64, device=U.device)
        if dist.get_rank(group) == owner:
            uc, sc, vch = torch.linalg.svd((r_u * s) @ r_v.t())
            uc, sc, vch = uc.contiguous(), sc.contiguous(), vch.contiguous()
        for t in (uc, sc, vch):
            dist.broadcast(t, group=group, group_src=owner)
        m_u = torch.linalg.solve_triangular(r_u, uc, upper=True)  # R_U^-1 Uc
        m_v = torch.linalg.solve_triangular(r_v, vch.t(), upper=True)  # R_V^-1 Vc
        new_u = (U.to(f64) @ m_u).to(svd_dtype)
        new_vh = (m_v.t() @ Vh.to(f64)).to(svd_dtype)
        local(self.s).copy_(local_slice(self.s, sc))
        for indices, left, right in ((self.idx, self.U_active, self.Vh_active),
                                     (self.frozen_idx, self.U_frozen, self.Vh_frozen)):
            local(left).copy_(new_u.index_select(1, indices))
            local(right).copy_(new_vh.index_select(0, indices))
        reset_param_state(optimizer, [self.s, self.U_active, self.Vh_active])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"k={self.k}, rank={self.rank}, bias={self.bias is not None}, "
                f"enhanced={self.enhanced}, all_singular_values={self.all_singular_values}, "
                f"forward_mode={self.forward_mode!r}"
                + ("" if self.frozen_dtype is None else f", frozen_dtype={self.frozen_dtype}"))


@torch.no_grad()
def normalize_layers_(layers: list[SpectralLinear]) -> None:
    """:meth:`SpectralLinear.normalize_` for many layers at once, with foreach ops.

    Clamps every ``s`` to ``>= 0`` and scales every column of ``U_active`` and row of
    ``Vh_active`` to unit L2 norm: two norm reductions per layer and three foreach ops in
    all instead of seven ops per layer, with the same values (the same op on each tensor).
    """
    if not layers:
        return
    torch._foreach_clamp_min_([local(layer.s) for layer in layers], 0)
    factors, lengths = [], []
    for layer in layers:  # columns of U_active, rows of Vh_active
        factors += [local(layer.U_active), local(layer.Vh_active)]
        # Under FSDP2 a norm spans the shards: norms() all-reduces the sums of squares.
        lengths += [norms(layer.U_active, 0), norms(layer.Vh_active, 1)]
    # A vector driven to exactly zero keeps its direction undefined; leave it at zero
    # rather than dividing by zero (its singular value then no longer matters).
    torch._foreach_clamp_min_(lengths, 1e-12)
    torch._foreach_div_(factors, lengths)
