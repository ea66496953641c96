"""The SST forward/backward as one autograd Function.

Storage convention (see :class:`~sparse_spectral.spectral.layer.SpectralLinear`):

* ``U`` (m, k) and ``Vh`` (k, n) are frozen and hold the full factors; their entries at
  the active indices ``idx`` are stale while those vectors are checked out.
* ``U_active`` (m, r) and ``Vh_active`` (r, n) hold the live copies of ``U[:, idx]`` and
  ``Vh[idx, :]``.
* ``s`` (k,) holds every singular value.

The effective weight is ``W = U_eff diag(s) Vh_eff`` where ``U_eff`` is ``U`` with columns
``idx`` replaced by ``U_active`` (and likewise for ``Vh_eff``). Instead of building
``U_eff`` we mask the stale entries through ``s``::

    y = U (s_frozen * (Vh x)) + U_active (s[idx] * (Vh_active x))     s_frozen = s with s[idx] = 0

so the frozen product never sees the stale vectors and nothing of size (m, k) is copied.

Gradients (``G = dL/dW = sum_t dy_t x_t^T``, never formed):

* input and ``s``: the true gradients;
* active vectors, enhanced mode: ``G v_i`` and ``G^T u_i`` (the true ones without the
  ``s_i`` factor, SPEC section 2); default mode: the true gradients ``s_i G v_i``,
  ``s_i G^T u_i``.

Two equivalent evaluations (same outputs and gradients up to rounding; pick with
:func:`~sparse_spectral.spectral.cost.choose_mode`):

* ``factored`` (:class:`SpectralLinearFunction`): two skinny products per pass, cost
  ``T (m + n) (2k + 3r)`` multiply-adds for ``T`` tokens; no ``(m, n)`` tensor at all.
* ``composed`` (:class:`ComposedSpectralLinearFunction`): build ``W = U_eff diag(s) Vh_eff``
  once, run a dense layer, and in the backward pass form ``G`` once as a transient
  ``(m, n)`` buffer and read the ``s`` and active-vector gradients off it; cost
  ``3 T m n + m n (2k + 3r)``, cheaper than factored once ``T`` is a small multiple of ``k``.
"""

from __future__ import annotations

import torch


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class SpectralLinearFunction(torch.autograd.Function):
    """``y = U_eff diag(s) Vh_eff x + b`` with SST's gradients for the active vectors."""

    @staticmethod
    def forward(ctx, x, U, Vh, s, U_active, Vh_active, idx, bias, enhanced: bool,
                all_singular_values: bool = True):
        # x: (..., n) -> x2: (T, n) with T the number of tokens.
        x2 = _flatten(x)
        s_active = s.index_select(0, idx)  # (r,)
        s_frozen = s.index_fill(0, idx, 0.0)  # (k,)
        z = x2 @ Vh.t()  # (T, k), columns idx are stale and masked below
        z_active = x2 @ Vh_active.t()  # (T, r)
        y = (z * s_frozen) @ U.t() + (z_active * s_active) @ U_active.t()
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x2, U, Vh, s, U_active, Vh_active, idx, z, z_active)
        ctx.enhanced = enhanced
        ctx.all_singular_values = all_singular_values
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y.reshape(*x.shape[:-1], U.shape[0])

    @staticmethod
    def backward(ctx, grad_y):
        x2, U, Vh, s, U_active, Vh_active, idx, z, z_active = ctx.saved_tensors
        gy = _flatten(grad_y)  # (T, m)
        s_active = s.index_select(0, idx)
        s_frozen = s.index_fill(0, idx, 0.0)

        g = gy @ U  # (T, k): u_i^T dy_t, stale at idx
        g_active = gy @ U_active  # (T, r)

        grad_x = grad_s = grad_U_active = grad_Vh_active = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (g * s_frozen) @ Vh + (g_active * s_active) @ Vh_active
            grad_x = grad_x.reshape(ctx.x_shape)
        if ctx.needs_input_grad[3]:
            # dL/ds_i = u_i^T G v_i = sum_t (u_i^T dy_t)(v_i^T x_t)
            grad_active_s = (g_active * z_active).sum(0)
            if ctx.all_singular_values:
                grad_s = (g * z).sum(0).index_copy(0, idx, grad_active_s)
            else:  # ablation: only the sampled singular values train
                grad_s = torch.zeros_like(s).index_copy(0, idx, grad_active_s)
        scale = torch.ones_like(s_active) if ctx.enhanced else s_active
        if ctx.needs_input_grad[4]:
            grad_U_active = gy.t() @ (z_active * scale)  # (m, r): G v_i [* s_i]
        if ctx.needs_input_grad[5]:
            grad_Vh_active = (g_active * scale).t() @ x2  # (r, n): (G^T u_i)^T [* s_i]
        if ctx.has_bias and ctx.needs_input_grad[7]:
            grad_bias = gy.sum(0)
        return (grad_x, None, None, grad_s, grad_U_active, grad_Vh_active, None, grad_bias,
                None, None)


def compose_weight(U: torch.Tensor, Vh: torch.Tensor, s: torch.Tensor, U_active: torch.Tensor,
                   Vh_active: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``W = U_eff diag(s) Vh_eff`` of shape ``(m, n)``, without building ``U_eff``.

    The stale frozen copies at ``idx`` are masked through ``s`` and the live active pairs
    added on top; the singular values scale whichever factor is smaller.
    """
    s_frozen = s.index_fill(0, idx, 0.0)
    m, k = U.shape
    n = Vh.shape[1]
    W = (U * s_frozen) @ Vh if m <= n else U @ (s_frozen.unsqueeze(1) * Vh)
    return W.addmm_(U_active * s.index_select(0, idx), Vh_active)


def _sandwich_diagonal(U: torch.Tensor, G: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """``diag(U^T G Vh^T)``, i.e. ``u_i^T G v_i`` for every ``i``: shape ``(k,)``.

    Computed in four row blocks of ``Vh`` so the transient stays a quarter of ``(k, n)``.
    """
    k = U.shape[1]
    block = max(1, -(-k // 4))
    out = torch.empty(k, dtype=G.dtype, device=G.device)
    for start in range(0, k, block):
        rows = slice(start, start + block)
        out[rows] = (U[:, rows].t() @ G).mul_(Vh[rows]).sum(1)
    return out


class ComposedSpectralLinearFunction(torch.autograd.Function):
    """The same map and gradients as :class:`SpectralLinearFunction`, run as a dense layer.

    Forward composes ``W (m, n)`` and keeps it for the input gradient. Backward forms
    ``G = sum_t dy_t x_t^T`` (one transient ``(m, n)`` buffer) and derives every
    parameter gradient from it: ``G v_i``, ``G^T u_i`` for the active pairs and
    ``u_i^T G v_i`` for the singular values. No tensor of the size of ``U`` or ``Vh`` is
    ever produced as a gradient.
    """

    @staticmethod
    def forward(ctx, x, U, Vh, s, U_active, Vh_active, idx, bias, enhanced: bool,
                all_singular_values: bool = True):
        W = compose_weight(U, Vh, s, U_active, Vh_active, idx)  # (m, n)
        y = torch.nn.functional.linear(x, W, bias)
        ctx.save_for_backward(_flatten(x), W, U, Vh, s, U_active, Vh_active, idx)
        ctx.enhanced = enhanced
        ctx.all_singular_values = all_singular_values
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x2, W, U, Vh, s, U_active, Vh_active, idx = ctx.saved_tensors
        gy = _flatten(grad_y)  # (T, m)
        grad_x = grad_s = grad_U_active = grad_Vh_active = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (gy @ W).reshape(ctx.x_shape)
        need = ctx.needs_input_grad
        if need[3] or need[4] or need[5]:
            G = gy.t() @ x2  # (m, n), the only full-size transient
            G_v = G @ Vh_active.t()  # (m, r): G v_i
            Gt_u = U_active.t() @ G  # (r, n): (G^T u_i)^T
            if need[3]:
                grad_active_s = (Gt_u * Vh_active).sum(1)  # u_i^T G v_i
                if ctx.all_singular_values:
                    grad_s = _sandwich_diagonal(U, G, Vh).index_copy_(0, idx, grad_active_s)
                else:  # ablation: only the sampled singular values train
                    grad_s = torch.zeros_like(s).index_copy_(0, idx, grad_active_s)
            del G
            s_active = s.index_select(0, idx)
            if need[4]:
                grad_U_active = G_v if ctx.enhanced else G_v * s_active
            if need[5]:
                grad_Vh_active = Gt_u if ctx.enhanced else Gt_u * s_active.unsqueeze(1)
        if ctx.has_bias and need[7]:
            grad_bias = gy.sum(0)
        return (grad_x, None, None, grad_s, grad_U_active, grad_Vh_active, None, grad_bias,
                None, None)


MODES = ("factored", "composed")


def spectral_linear(
    x: torch.Tensor,
    U: torch.Tensor,
    Vh: torch.Tensor,
    s: torch.Tensor,
    U_active: torch.Tensor,
    Vh_active: torch.Tensor,
    idx: torch.Tensor,
    bias: torch.Tensor | None = None,
    enhanced: bool = True,
    all_singular_values: bool = True,
    mode: str = "factored",
) -> torch.Tensor:
    """Apply an SST layer.

    Args:
        x: input, shape ``(..., n)``.
        U: frozen left factor, ``(m, k)``.
        Vh: frozen right factor, ``(k, n)``.
        s: singular values, ``(k,)``.
        U_active: live left vectors, ``(m, r)``, standing for ``U[:, idx]``.
        Vh_active: live right vectors, ``(r, n)``, standing for ``Vh[idx, :]``.
        idx: active indices, ``(r,)`` int64, distinct.
        bias: optional ``(m,)``.
        enhanced: drop the ``s_i`` factor from the active vectors' gradients.
        all_singular_values: give every ``s_i`` its gradient (SST); ``False`` keeps the
            gradient of the sampled ones only (the paper's ablation).
        mode: ``"factored"`` or ``"composed"`` (see the module docstring); the results agree
            up to rounding.

    Returns:
        Output of shape ``(..., m)``.

    No gradient is ever produced for ``U`` or ``Vh``: they are frozen by design.
    """
    if mode == "factored":
        function = SpectralLinearFunction
    elif mode == "composed":
        function = ComposedSpectralLinearFunction
    else:
        raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(MODES)}")
    return function.apply(x, U, Vh, s, U_active, Vh_active, idx, bias, enhanced,
                          all_singular_values)
