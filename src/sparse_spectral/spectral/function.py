"""The SST forward/backward as autograd Functions.

Storage convention (see :class:`~sparse_spectral.spectral.layer.SpectralLinear`): the k
singular triplets are split between

* the active pairs ``U_active`` (m, r), ``Vh_active`` (r, n), standing for the singular
  indices ``idx`` (r,), which train, and
* the frozen pairs ``U_frozen`` (m, k - r), ``Vh_frozen`` (k - r, n), standing for the
  indices ``frozen_idx`` (k - r,), which do not,

while ``s`` (k,) holds every singular value, indexed by singular index. Every vector is
stored once, so the effective weight is::

    W = U_frozen diag(s[frozen_idx]) Vh_frozen + U_active diag(s[idx]) Vh_active

Gradients (``G = dL/dW = sum_t dy_t x_t^T``):

* input and ``s``: the true gradients;
* active vectors, enhanced mode: ``G v_i`` and ``G^T u_i`` (the true ones without the
  ``s_i`` factor, SPEC section 2); default mode: the true gradients ``s_i G v_i``,
  ``s_i G^T u_i``;
* frozen vectors: none, ever.

Two equivalent evaluations (same outputs and gradients up to rounding; pick with
:func:`~sparse_spectral.spectral.cost.choose_mode`):

* ``factored`` (:class:`SpectralLinearFunction`): two skinny products per pass, cost
  ``T (m + n) (2k + 3r)`` multiply-adds for ``T`` tokens; no ``(m, n)`` tensor at all.
* ``composed`` (:class:`ComposedSpectralLinearFunction`): build ``W`` once, run a dense
  layer, and in the backward pass form ``G`` once as a transient ``(m, n)`` buffer and read
  the ``s`` and active-vector gradients off it; cost ``3 T m n + m n (2k + 3r)``, cheaper
  than factored once ``T`` is a small multiple of ``k``.

Precision (mixed precision, ``torch.autocast``): autocast casts the operands of the ops it
knows, but a custom Function is not one of them, so both Functions apply its policy
themselves, for whatever device the parameters are on (cpu, cuda, ...). When autocast is
on for ``s.device.type``, forward casts every floating input that is not float64 (input,
factors, ``s``, bias) to autocast's dtype (:func:`torch.get_autocast_dtype`, e.g. bf16)
and runs every product in it with autocast itself off, so the output has that dtype, like
``nn.Linear``'s. Backward runs in the same dtype with autocast off (whatever the caller's
state) and returns each gradient in the dtype of its input, so fp32 parameters get fp32
gradients. Without autocast nothing is cast (fp32 numbers are unchanged; a model cast to
bf16 computes in bf16). Products with a fixed operand run in the operand's dtype: torch
has no bf16 sparse CSR product on CPU, and such products are bound by memory, not math.

Frozen factors may be stored in a lower precision than the rest (SST's ``frozen_dtype``,
e.g. bf16 factors beside fp32 active vectors and ``s``). They are used in the dtype the
active vectors compute in (autocast's, else their own), cast on use in forward and again in
backward: the stored tensors are what ``save_for_backward`` keeps, so no full-precision
copy outlives a pass. The cost is one transient copy of one layer's frozen factors per pass
(``(m + n)(k - r)`` numbers, read and written once: memory-bound, small next to the
products' ``T (m + n) k`` multiply-adds); under bf16 autocast with bf16 frozen factors the
cast is a no-op.
"""

from __future__ import annotations

import contextlib

import torch

from ..linear import FixedOperand

# The input may also be a fixed operand (sparse_spectral.linear: a constant (T, n) data
# matrix that is not a tensor, e.g. a CSR bag-of-words): both products below are written
# as ``x2 @ M.t()`` and ``g.t() @ x2``, which such an operand provides, and it never gets a
# gradient. The Functions never ask what it is; they only keep it off save_for_backward.


def _flatten(x: torch.Tensor | FixedOperand) -> torch.Tensor | FixedOperand:
    """``(..., n)`` tensor -> ``(T, n)``; a fixed operand is ``(T, n)`` already."""
    return x.reshape(-1, x.shape[-1]) if isinstance(x, torch.Tensor) else x


def _save_input(ctx, x2: torch.Tensor | FixedOperand) -> tuple:
    """Tensors go through ``save_for_backward``; a fixed operand (data) is kept on ``ctx``."""
    ctx.operand = None if isinstance(x2, torch.Tensor) else x2
    return (x2,) if ctx.operand is None else ()


def _saved_input(ctx, saved: tuple) -> tuple[torch.Tensor | FixedOperand, tuple]:
    """``(x2, the other saved tensors)``, undoing :func:`_save_input`."""
    if ctx.operand is not None:
        return ctx.operand, saved
    return saved[0], saved[1:]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes in on ``device_type`` now, or None where it is off."""
    if not hasattr(torch, "get_autocast_dtype"):  # torch < 2.4: per-device functions only
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        return None
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta)
        pass
    return None


def _autocast_off(device_type: str):
    """A context with autocast off on ``device_type``: the Functions cast for themselves."""
    if _autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


_FROZEN = (1, 2)  # positions of U_frozen, Vh_frozen among the Functions' arguments
_ACTIVE_U = 4  # position of U_active: the frozen factors compute in its (cast) dtype


def _cast_inputs(ctx, device: torch.device, inputs: tuple) -> tuple:
    """Record the call's precision on ``ctx``; return ``inputs`` as the forward uses them.

    Under autocast every floating tensor that is not float64 is cast to autocast's dtype
    (autocast's own policy; integer indices and fixed operands stay as they are). The
    frozen factors are returned as stored: the Functions cast them on use, to
    ``ctx.frozen_dtype`` (:func:`_frozen`), so that only the stored tensors are saved for
    backward.

    Args:
        device: the parameters' device; autocast's state is read for its type.
        inputs: the Function's arguments, in order.
    """
    ctx.device_type = device.type
    ctx.compute_dtype = _autocast_dtype(device.type)
    ctx.input_dtypes = tuple(t.dtype if isinstance(t, torch.Tensor) else None for t in inputs)
    if ctx.compute_dtype is not None:
        inputs = tuple(t.to(ctx.compute_dtype) if i not in _FROZEN
                       and isinstance(t, torch.Tensor) and t.is_floating_point()
                       and t.dtype != torch.float64 else t
                       for i, t in enumerate(inputs))
    ctx.frozen_dtype = inputs[_ACTIVE_U].dtype
    return inputs


def _frozen(ctx, *factors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The frozen factors in the dtype the call computes in (no copy when they have it)."""
    return tuple(f.to(ctx.frozen_dtype) for f in factors)


def _cast_grad_output(ctx, grad_y: torch.Tensor) -> torch.Tensor:
    """``dL/dy`` in the dtype the forward computed in."""
    return grad_y if ctx.compute_dtype is None else grad_y.to(ctx.compute_dtype)


def _cast_grads(ctx, grads: tuple) -> tuple:
    """Each gradient in its input's dtype (fp32 parameters get fp32 gradients)."""
    assert len(grads) == len(ctx.input_dtypes)
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.input_dtypes))


def _times(x2: torch.Tensor | FixedOperand, M: torch.Tensor) -> torch.Tensor:
    """``x2 @ M`` in ``M``'s dtype; a fixed operand multiplies in its own dtype."""
    if isinstance(x2, torch.Tensor):
        return x2 @ M
    return (x2 @ M.to(getattr(x2, "dtype", M.dtype))).to(M.dtype)


def _rtimes(G: torch.Tensor, x2: torch.Tensor | FixedOperand) -> torch.Tensor:
    """``G @ x2`` in ``G``'s dtype; a fixed operand multiplies in its own dtype."""
    if isinstance(x2, torch.Tensor):
        return G @ x2
    return (G.to(getattr(x2, "dtype", G.dtype)) @ x2).to(G.dtype)


def _scatter_s(s: torch.Tensor, idx: torch.Tensor, active: torch.Tensor,
               frozen_idx: torch.Tensor, frozen: torch.Tensor | None) -> torch.Tensor:
    """A ``(k,)`` gradient for ``s`` from its active part and (optionally) its frozen part."""
    out = torch.zeros_like(s).index_copy_(0, idx, active)
    if frozen is not None:
        out.index_copy_(0, frozen_idx, frozen)
    return out


def _amp_forward(impl, ctx, args: tuple):
    """Run a Function's ``impl(ctx, x, U_frozen, Vh_frozen, s, ...)`` under autocast rules.

    The inputs are cast as autocast would (on the device of ``s``, ``args[3]``), then the
    arithmetic runs with autocast off so that every product has the dtype chosen here.
    """
    args = _cast_inputs(ctx, args[3].device, args)
    with _autocast_off(ctx.device_type):
        return impl(ctx, *args)


def _amp_backward(impl, ctx, grad_y):
    """``impl(ctx, grad_y)`` with autocast off; gradients return in their inputs' dtypes."""
    with _autocast_off(ctx.device_type):
        grads = impl(ctx, _cast_grad_output(ctx, grad_y))
    return _cast_grads(ctx, grads)


class SpectralLinearFunction(torch.autograd.Function):
    """``y = W x + b`` evaluated through the factors, with SST's gradients."""

    @staticmethod
    def forward(ctx, *args):
        """``args``: those of :meth:`_forward`; cast for autocast, run with it off."""
        return _amp_forward(SpectralLinearFunction._forward, ctx, args)

    @staticmethod
    def backward(ctx, grad_y):
        return _amp_backward(SpectralLinearFunction._backward, ctx, grad_y)

    @staticmethod
    def _forward(ctx, x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias,
                 enhanced: bool, all_singular_values: bool = True):
        x2 = _flatten(x)  # (T, n), T the number of tokens
        s_active = s.index_select(0, idx)  # (r,)
        s_frozen = s.index_select(0, frozen_idx)  # (k - r,)
        U_f, Vh_f = _frozen(ctx, U_frozen, Vh_frozen)  # the stored ones are saved below
        z = _times(x2, Vh_f.t())  # (T, k - r)
        z_active = _times(x2, Vh_active.t())  # (T, r)
        y = (z * s_frozen) @ U_f.t() + (z_active * s_active) @ U_active.t()
        del U_f, Vh_f
        if bias is not None:
            y = y + bias
        # The gathered s (k numbers) are kept so that backward does not gather them again.
        ctx.save_for_backward(*_save_input(ctx, x2), U_frozen, Vh_frozen, s, U_active,
                              Vh_active, idx, frozen_idx, z, z_active, s_active, s_frozen)
        ctx.enhanced = enhanced
        ctx.all_singular_values = all_singular_values
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y.reshape(*x.shape[:-1], U_active.shape[0])

    @staticmethod
    def _backward(ctx, grad_y):
        x2, saved = _saved_input(ctx, ctx.saved_tensors)
        (U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, z, z_active, s_active,
         s_frozen) = saved
        gy = _flatten(grad_y)  # (T, m)
        need = ctx.needs_input_grad

        g = gy @ _frozen(ctx, U_frozen)[0]  # (T, k - r): u_i^T dy_t
        g_active = gy @ U_active  # (T, r)

        grad_x = grad_s = grad_U_active = grad_Vh_active = grad_bias = None
        if need[0]:
            grad_x = ((g * s_frozen) @ _frozen(ctx, Vh_frozen)[0]
                      + (g_active * s_active) @ Vh_active)
            grad_x = grad_x.reshape(ctx.x_shape)
        if need[3]:
            # dL/ds_i = u_i^T G v_i = sum_t (u_i^T dy_t)(v_i^T x_t)
            frozen = (g * z).sum(0) if ctx.all_singular_values else None
            grad_s = _scatter_s(s, idx, (g_active * z_active).sum(0), frozen_idx, frozen)
        # G v_i and (G^T u_i)^T, times s_i unless enhanced
        if need[4]:
            grad_U_active = gy.t() @ (z_active if ctx.enhanced else z_active * s_active)
        if need[5]:
            grad_Vh_active = _rtimes((g_active if ctx.enhanced else g_active * s_active).t(), x2)
        if ctx.has_bias and need[8]:
            grad_bias = gy.sum(0)
        return (grad_x, None, None, grad_s, grad_U_active, grad_Vh_active, None, None,
                grad_bias, None, None)


def compose_weight(U_frozen: torch.Tensor, Vh_frozen: torch.Tensor, s: torch.Tensor,
                   U_active: torch.Tensor, Vh_active: torch.Tensor, idx: torch.Tensor,
                   frozen_idx: torch.Tensor) -> torch.Tensor:
    """``W = U_eff diag(s) Vh_eff`` of shape ``(m, n)``; the singular values scale whichever
    frozen factor is smaller."""
    s_frozen = s.index_select(0, frozen_idx)
    m, n = U_active.shape[0], Vh_active.shape[1]
    if m <= n:
        W = (U_frozen * s_frozen) @ Vh_frozen
    else:
        W = U_frozen @ (s_frozen.unsqueeze(1) * Vh_frozen)
    return W.addmm_(U_active * s.index_select(0, idx), Vh_active)


def _sandwich_diagonal(U: torch.Tensor, G: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """``u_i^T G v_i`` for every column ``u_i`` of ``U (m, j)`` and row ``v_i`` of ``Vh (j, n)``.

    One ``(j, n)`` transient: no larger than ``G`` itself (``j <= k <= m``), which backward
    holds anyway, so one product serves where row blocks would cost four ops a block.
    """
    return (U.t() @ G).mul_(Vh).sum(1)


def _factor_grads(G: torch.Tensor, need: tuple, U_frozen: torch.Tensor, Vh_frozen: torch.Tensor,
                  s: torch.Tensor, U_active: torch.Tensor, Vh_active: torch.Tensor,
                  idx: torch.Tensor, frozen_idx: torch.Tensor, enhanced: bool,
                  all_singular_values: bool) -> tuple:
    """SST's gradients of ``s``, ``U_active``, ``Vh_active`` from ``G = dL/dW`` ``(m, n)``.

    ``G v_i``, ``G^T u_i`` for the active pairs (times ``s_i`` unless ``enhanced``) and
    ``u_i^T G v_i`` for the singular values (the frozen ones only with
    ``all_singular_values``); ``need`` says which of the three to compute (None otherwise).
    """
    grad_s = grad_U_active = grad_Vh_active = None
    G_v = G @ Vh_active.t()  # (m, r): G v_i
    Gt_u = U_active.t() @ G  # (r, n): (G^T u_i)^T
    if need[0]:
        frozen = None
        if all_singular_values:  # the frozen factors in G's dtype, one cast each
            frozen = _sandwich_diagonal(U_frozen.to(G.dtype), G, Vh_frozen.to(G.dtype))
        grad_s = _scatter_s(s, idx, (Gt_u * Vh_active).sum(1), frozen_idx, frozen)
    s_active = None if enhanced else s.index_select(0, idx)
    if need[1]:
        grad_U_active = G_v if enhanced else G_v * s_active
    if need[2]:
        grad_Vh_active = Gt_u if enhanced else Gt_u * s_active.unsqueeze(1)
    return grad_s, grad_U_active, grad_Vh_active


class SpectralWeightFunction(torch.autograd.Function):
    """``W = U_eff diag(s) Vh_eff`` ``(m, n)`` as a tensor, with SST's gradients.

    For code that reads a layer's weight and computes with it instead of calling the layer
    (:attr:`~sparse_spectral.spectral.layer.SpectralLinear.weight`): ``dL/dW`` reaches
    ``s`` and the active vectors exactly as it does through :class:`ComposedSpectralLinearFunction`
    (enhanced gradient, singular values per ``all_singular_values``), the frozen vectors get
    none. Autocast is off inside: ``W`` has the factors' dtype, like a dense layer's weight.
    """

    @staticmethod
    def forward(ctx, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx,
                enhanced: bool, all_singular_values: bool):
        with _autocast_off(s.device.type):
            W = compose_weight(U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx)
        ctx.save_for_backward(U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx)
        ctx.enhanced, ctx.all_singular_values = enhanced, all_singular_values
        return W

    @staticmethod
    def backward(ctx, grad_W):
        U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx = ctx.saved_tensors
        with _autocast_off(s.device.type):
            grads = _factor_grads(grad_W.to(s.dtype), ctx.needs_input_grad[2:5], U_frozen,
                                  Vh_frozen, s, U_active, Vh_active, idx, frozen_idx,
                                  ctx.enhanced, ctx.all_singular_values)
        return (None, None, *grads, None, None, None, None)


class ComposedWeightCache:
    """One layer's last composed ``W (m, n)``, reused while its factors are unchanged.

    Under gradient accumulation every micro-batch of an optimizer step composes the same
    ``W``; keeping the first one saves the others' ``U diag(s) Vh`` products (two matmuls
    and four small ops per layer and micro-batch). The key is each factor's storage
    address and version counter (every in-place change, by the optimizer, a swap, a
    re-SVD or ``load_state_dict``, bumps the version; a move or a ``.data`` assignment
    changes the address) and the dtype ``W`` is composed in, so a stale ``W`` is never
    used. The ``W`` held is one that backward keeps anyway for the input gradient; it is
    released by :meth:`clear` (SST's ``after_step``), so it does not outlive the step.
    """

    def __init__(self):
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None

    @staticmethod
    def key(*factors: torch.Tensor) -> tuple:
        """The identity of ``factors`` as they are now (addresses and versions)."""
        return tuple((t.data_ptr(), t._version) for t in factors)

    def get(self, key: tuple, compose) -> torch.Tensor:
        """The ``W`` for ``key``: the kept one, or ``compose()`` (kept for next time)."""
        if key != self._key:
            self._weight, self._key = compose(), key
        return self._weight

    def clear(self) -> None:
        self._key = self._weight = None

    def __deepcopy__(self, memo):  # a copied layer starts without a kept W
        return ComposedWeightCache()


class ComposedSpectralLinearFunction(torch.autograd.Function):
    """The same map and gradients as :class:`SpectralLinearFunction`, run as a dense layer.

    Forward composes ``W (m, n)`` and keeps it for the input gradient. Backward forms
    ``G = sum_t dy_t x_t^T`` (one transient ``(m, n)`` buffer) and derives every
    parameter gradient from it: ``G v_i``, ``G^T u_i`` for the active pairs and
    ``u_i^T G v_i`` for the singular values.
    """

    @staticmethod
    def forward(ctx, *args):
        """``args``: those of :meth:`_forward`; cast for autocast, run with it off."""
        return _amp_forward(ComposedSpectralLinearFunction._forward, ctx, args)

    @staticmethod
    def backward(ctx, grad_y):
        return _amp_backward(ComposedSpectralLinearFunction._backward, ctx, grad_y)

    @staticmethod
    def _forward(ctx, x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias,
                 enhanced: bool, all_singular_values: bool = True,
                 cache: tuple[ComposedWeightCache, tuple] | None = None):
        def compose():  # the stored frozen factors are saved below
            return compose_weight(*_frozen(ctx, U_frozen, Vh_frozen), s, U_active, Vh_active,
                                  idx, frozen_idx)

        if cache is None:
            W = compose()
        else:  # ``(cache, key of the stored factors)``; the dtype W is composed in joins it
            W = cache[0].get((cache[1], ctx.frozen_dtype, s.dtype), compose)
        if isinstance(x, torch.Tensor):
            y = torch.nn.functional.linear(x, W, bias)
        else:  # a fixed operand: its own product
            y = _times(x, W.t())
            y = y if bias is None else y + bias
        ctx.save_for_backward(*_save_input(ctx, _flatten(x)), W, U_frozen, Vh_frozen, s,
                              U_active, Vh_active, idx, frozen_idx)
        ctx.enhanced = enhanced
        ctx.all_singular_values = all_singular_values
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def _backward(ctx, grad_y):
        x2, saved = _saved_input(ctx, ctx.saved_tensors)
        W, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx = saved
        gy = _flatten(grad_y)  # (T, m)
        need = ctx.needs_input_grad
        grad_x = grad_s = grad_U_active = grad_Vh_active = grad_bias = None
        if need[0]:
            grad_x = (gy @ W).reshape(ctx.x_shape)
        if need[3] or need[4] or need[5]:
            G = _rtimes(gy.t(), x2)  # (m, n), the only full-size transient
            grad_s, grad_U_active, grad_Vh_active = _factor_grads(
                G, need[3:6], U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx,
                ctx.enhanced, ctx.all_singular_values)
            del G
        if ctx.has_bias and need[8]:
            grad_bias = gy.sum(0)
        return (grad_x, None, None, grad_s, grad_U_active, grad_Vh_active, None, None,
                grad_bias, None, None, None)


MODES = ("factored", "composed")


def spectral_linear(
    x: torch.Tensor | FixedOperand,
    U_frozen: torch.Tensor,
    Vh_frozen: torch.Tensor,
    s: torch.Tensor,
    U_active: torch.Tensor,
    Vh_active: torch.Tensor,
    idx: torch.Tensor,
    frozen_idx: torch.Tensor,
    bias: torch.Tensor | None = None,
    enhanced: bool = True,
    all_singular_values: bool = True,
    mode: str = "factored",
    weight_cache: ComposedWeightCache | None = None,
) -> torch.Tensor:
    """Apply an SST layer.

    Args:
        x: input, shape ``(..., n)``, or a ``(T, n)`` fixed operand
            (:mod:`sparse_spectral.linear`).
        U_frozen: frozen left vectors, ``(m, k - r)``.
        Vh_frozen: frozen right vectors, ``(k - r, n)``.
        s: singular values, ``(k,)``, indexed by singular index.
        U_active: trained left vectors, ``(m, r)``.
        Vh_active: trained right vectors, ``(r, n)``.
        idx: singular indices of the active pairs, ``(r,)`` int64.
        frozen_idx: singular indices of the frozen pairs, ``(k - r,)`` int64; together with
            ``idx`` a permutation of ``range(k)``.
        bias: optional ``(m,)``.
        enhanced: drop the ``s_i`` factor from the active vectors' gradients.
        all_singular_values: give every ``s_i`` its gradient (SST); ``False`` keeps the
            gradient of the sampled ones only (the paper's ablation).
        mode: ``"factored"`` or ``"composed"`` (see the module docstring); the results agree
            up to rounding.
        weight_cache: composed mode: reuse the ``W`` composed from these same factors
            (:class:`ComposedWeightCache`); None: compose it for this call.

    Returns:
        Output of shape ``(..., m)``: in autocast's dtype where autocast is on for
        ``s.device.type`` (gradients still land in each input's own dtype), else in the
        inputs' dtype.
    """
    if mode == "factored":
        return SpectralLinearFunction.apply(x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx,
                                            frozen_idx, bias, enhanced, all_singular_values)
    if mode != "composed":
        raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    cache = None
    if weight_cache is not None:
        key = ComposedWeightCache.key(U_frozen, Vh_frozen, s, U_active, Vh_active, idx,
                                      frozen_idx)
        cache = (weight_cache, key)
    return ComposedSpectralLinearFunction.apply(x, U_frozen, Vh_frozen, s, U_active, Vh_active,
                                                idx, frozen_idx, bias, enhanced,
                                                all_singular_values, cache)
