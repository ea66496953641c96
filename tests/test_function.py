"""The SST autograd Function against dense references computed with autograd."""

from __future__ import annotations

import pytest
import torch

from sparse_spectral.spectral.function import spectral_linear

M, N, R, T = 7, 5, 3, 11


def _setup(dtype=torch.float64, seed=0, zero_s=None):
    """``x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias``."""
    g = torch.Generator().manual_seed(seed)
    k = min(M, N)
    U_frozen = torch.randn(M, k - R, generator=g, dtype=dtype)
    Vh_frozen = torch.randn(k - R, N, generator=g, dtype=dtype)
    s = torch.rand(k, generator=g, dtype=dtype) + 0.5
    if zero_s is not None:
        s[zero_s] = 0.0
    idx = torch.tensor([3, 0, 2])
    frozen_idx = torch.tensor([4, 1])
    U_active = torch.randn(M, R, generator=g, dtype=dtype)
    Vh_active = torch.randn(R, N, generator=g, dtype=dtype)
    x = torch.randn(2, T, N, generator=g, dtype=dtype)
    bias = torch.randn(M, generator=g, dtype=dtype)
    return x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias


def _reference(x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias):
    """Autograd through the effective factors: U_eff diag(s) Vh_eff x + b."""
    k = s.shape[0]
    U_eff = U_active.new_zeros(M, k).index_copy(1, frozen_idx, U_frozen)
    U_eff = U_eff.index_copy(1, idx, U_active)
    Vh_eff = Vh_active.new_zeros(k, N).index_copy(0, frozen_idx, Vh_frozen)
    Vh_eff = Vh_eff.index_copy(0, idx, Vh_active)
    return x @ (U_eff * s @ Vh_eff).t() + bias


def _grads(fn, x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias, grad_out):
    leaves = [t.clone().requires_grad_(True) for t in (x, s, U_active, Vh_active, bias)]
    xl, sl, ual, vhl, bl = leaves
    fn(xl, U_frozen, Vh_frozen, sl, ual, vhl, idx, frozen_idx, bl).backward(grad_out)
    return [t.grad for t in leaves]


@pytest.mark.parametrize("zero_s", [None, [3]])
def test_forward_and_true_gradients_match_autograd(zero_s):
    args = _setup(zero_s=zero_s)
    grad_out = torch.randn(2, T, M, dtype=torch.float64)
    torch.testing.assert_close(spectral_linear(*args), _reference(*args), rtol=0, atol=1e-12)
    default = _grads(lambda *a: spectral_linear(*a, enhanced=False), *args, grad_out)
    expected = _grads(_reference, *args, grad_out)
    for got, want in zip(default, expected):  # x, s, U_active, Vh_active, bias
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11)


@pytest.mark.parametrize("zero_s", [None, [3]])
def test_enhanced_gradient_drops_the_singular_value_factor(zero_s):
    x, _, _, s, U_active, Vh_active, idx, _, bias = args = _setup(zero_s=zero_s)
    grad_out = torch.randn(2, T, M, dtype=torch.float64)
    gx, gs, gU, gVh, gb = _grads(lambda *a: spectral_linear(*a, enhanced=True), *args, grad_out)
    rx, rs, _, _, rb = _grads(_reference, *args, grad_out)
    # Input, s and bias gradients stay the true ones.
    torch.testing.assert_close(gx, rx, rtol=0, atol=1e-11)
    torch.testing.assert_close(gs, rs, rtol=0, atol=1e-11)
    torch.testing.assert_close(gb, rb, rtol=0, atol=1e-11)
    # G = dL/dW = sum_t dy_t x_t^T, then the enhanced gradients are G v_i and G^T u_i.
    G = grad_out.reshape(-1, M).t() @ x.reshape(-1, N)
    torch.testing.assert_close(gU, G @ Vh_active.t(), rtol=0, atol=1e-11)
    torch.testing.assert_close(gVh, (G.t() @ U_active).t(), rtol=0, atol=1e-11)
    # ... and nothing breaks where s_i = 0 (dividing autograd's result by s_i would).
    assert torch.isfinite(gU).all() and torch.isfinite(gVh).all()
    if zero_s is not None:
        slot = (idx == zero_s[0]).nonzero().item()
        assert gU[:, slot].abs().sum() > 0


def test_float32_gradients_within_1e5():
    args = [t.float() if t.is_floating_point() else t for t in _setup(seed=3)]
    grad_out = torch.randn(2, T, M)
    got = _grads(lambda *a: spectral_linear(*a, enhanced=False), *args, grad_out)
    want = _grads(_reference, *args, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_frozen_factors_get_no_gradient():
    x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias = _setup()
    s = s.clone().requires_grad_(True)
    spectral_linear(x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx,
                    bias).sum().backward()
    assert U_frozen.grad is None and Vh_frozen.grad is None and s.grad is not None


def test_gradcheck_default_mode():
    x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias = _setup()
    inputs = (x[:, :3].clone().requires_grad_(), U_frozen, Vh_frozen, s.clone().requires_grad_(),
              U_active.clone().requires_grad_(), Vh_active.clone().requires_grad_(), idx,
              frozen_idx, bias.clone().requires_grad_(), False)
    assert torch.autograd.gradcheck(spectral_linear, inputs)
