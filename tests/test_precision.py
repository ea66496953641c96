"""SST under mixed precision ("bf16-mixed": fp32 parameters, bf16 autocast) and in pure bf16.

Error bound used throughout (first-order, componentwise; Higham, *Accuracy and Stability of
Numerical Algorithms*, chapter 3): every output and gradient here is a polynomial in the
inputs with coefficients +1 (sums of products of input entries). Evaluating it with
roundings of relative size at most ``u`` perturbs each product term by at most
``(1 + u)^c - 1 ~ c u``, ``c`` the number of roundings on the term's longest path, so::

    |computed - exact| <= (c u + K u32) * p(|inputs|)

with ``p(|inputs|)`` the same polynomial at the inputs' absolute values (``absolute`` below:
the float64 reference run on ``|x|``, ``|U|``, ...), ``u = 2^-8`` (bf16), ``u32 = 2^-24``
for the fp32 accumulation inside each bf16 product and ``K`` the summed inner lengths of
the chain. ``c = 12`` counts the longest path in either mode: one rounding per input cast
(x, U, s, Vh, bias, dy), one per product or elementwise op output, e.g. composed forward:
U, s, U*s, Vh, mm, addmm, x, linear, bias (9) plus slack for fused ops rounding twice.
Measured errors stay below an eighth of the bound (the worst case aligns every rounding); a
dropped or extra ``s_i`` factor (``s`` in [0.5, 2]) exceeds it several times over.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TinyMLP
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sparse_spectral.methods import make_method
from sparse_spectral.sparse_rows import SparseRows
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.spectral.function import spectral_linear

BF16_U = 2.0**-8  # bf16 unit roundoff (8 significand bits)
FP16_U = 2.0**-11  # float16 unit roundoff (11 significand bits)
FP32_U = 2.0**-24
ROUNDINGS = 12  # longest chain of roundings in either mode (module docstring)
M, N, R = 9, 7, 3
MODES = ("factored", "composed")

_PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
             torch.ops.aten.addmm_.default, torch.ops.aten.bmm.default,
             torch.ops.aten.baddbmm.default}


class ProductDtypes(TorchDispatchMode):
    """Records the dtype of every dense matrix product that runs (below autocast)."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _PRODUCTS and not any(isinstance(a, torch.Tensor) and a.layout != torch.strided
                                         for a in args):
            self.dtypes.append(out.dtype)
        return out


def _inputs(shape, dtype=torch.float32, seed=0):
    """``x shape + (N,), U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias``.

    Orthonormal factors (as SST keeps them) and ``s`` in [0.5, 2], so ``s_i`` factors show.
    """
    g = torch.Generator().manual_seed(seed)
    k = min(M, N)
    U = torch.linalg.qr(torch.randn(M, k, generator=g, dtype=torch.float64))[0]
    Vh = torch.linalg.qr(torch.randn(N, k, generator=g, dtype=torch.float64))[0].t()
    s = torch.rand(k, generator=g, dtype=torch.float64) * 1.5 + 0.5
    order = torch.randperm(k, generator=g)
    idx, frozen_idx = order[:R], order[R:]
    x = torch.randn(*shape, N, generator=g, dtype=torch.float64)
    bias = torch.randn(M, generator=g, dtype=torch.float64)
    floats = [t.to(dtype) for t in (x, U[:, frozen_idx].contiguous(), Vh[frozen_idx].contiguous(),
                                    s, U[:, idx].contiguous(), Vh[idx].contiguous())]
    return (*floats, idx, frozen_idx, bias.to(dtype))


def _dense_reference(x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias,
                     grad_out, enhanced):
    """Float64 autograd on ``y = x (U_eff diag(s) Vh_eff)^T + b``.

    Returns:
        ``[y, dx, ds, dU_active, dVh_active, db]`` (``db`` None without bias); with
        ``enhanced`` the active vectors' gradients are ``G v_i`` and ``G^T u_i``.
    """
    f64 = [t.double() if isinstance(t, torch.Tensor) else t for t in (x, s, U_active, Vh_active)]
    xl, sl, ual, vhl = (t.detach().requires_grad_(isinstance(t, torch.Tensor)) for t in f64)
    bl = None if bias is None else bias.double().requires_grad_()
    k = s.shape[0]
    U_eff = ual.new_zeros(M, k).index_copy(1, frozen_idx, U_frozen.double())
    U_eff = U_eff.index_copy(1, idx, ual)
    Vh_eff = vhl.new_zeros(k, N).index_copy(0, frozen_idx, Vh_frozen.double())
    Vh_eff = Vh_eff.index_copy(0, idx, vhl)
    y = xl @ (U_eff * sl @ Vh_eff).t()
    y = y if bl is None else y + bl
    y.backward(grad_out.double())
    gU, gVh = ual.grad, vhl.grad
    if enhanced:  # the true gradients carry s_i once: G v_i s_i, s_i (G^T u_i)^T
        s_active = sl.detach()[idx]
        gU, gVh = gU / s_active, gVh / s_active.unsqueeze(1)
    return [y.detach(), xl.grad, sl.grad, gU, gVh, None if bl is None else bl.grad]


def _bound(args, grad_out, enhanced, inner, unit=BF16_U):
    """``(c u + K u32) * p(|inputs|)`` for each of the reference's outputs (``u = unit``)."""
    absolute = [a.abs() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]
    p_abs = _dense_reference(*absolute, grad_out.abs(), enhanced)
    scale = ROUNDINGS * unit + inner * FP32_U
    return [None if p is None else scale * p for p in p_abs]


def _run(mode, args, grad_out, enhanced, autocast, dtype=torch.bfloat16):
    """``[y, dx, ds, dU_active, dVh_active, db]`` and the dtypes of the dense products."""
    x, U_frozen, Vh_frozen, s, U_active, Vh_active, idx, frozen_idx, bias = args
    leaves = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t
              for t in (x, s, U_active, Vh_active)]
    xl, sl, ual, vhl = leaves
    bl = None if bias is None else bias.detach().clone().requires_grad_()
    recorder = ProductDtypes()
    with recorder:
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            y = spectral_linear(xl, U_frozen, Vh_frozen, sl, ual, vhl, idx, frozen_idx, bl,
                                enhanced=enhanced, mode=mode)
        y.backward(grad_out.to(y.dtype))
    grad_x = xl.grad if isinstance(xl, torch.Tensor) else None
    grads = [grad_x, sl.grad, ual.grad, vhl.grad, None if bl is None else bl.grad]
    return [y.detach(), *grads], recorder.dtypes, (xl, sl, ual, vhl, bl)


def _check_within_bound(got, want, bound, names):
    for name, g, w, b in zip(names, got, want, bound):
        if w is None:
            continue
        err = (g.double() - w).abs()
        worst = (err / b.clamp_min(1e-300)).max().item()  # b = 0 where a column is all 0
        assert (err <= b).all(), f"{name}: error reaches {worst:.2f} x the bf16 bound"


NAMES = ("y", "dx", "ds", "dU_active", "dVh_active", "dbias")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enhanced", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(13,), (2, 11)], ids=["2d", "3d"])
def test_bf16_mixed_matches_float64_within_the_bf16_bound(mode, enhanced, with_bias, shape):
    *args, bias = _inputs(shape)
    args = (*args, bias if with_bias else None)
    grad_out = torch.randn(*shape, M, generator=torch.Generator().manual_seed(5))
    grad_out = grad_out.bfloat16().float()  # the bf16 output's gradient is bf16 anyway
    got, products, leaves = _run(mode, args, grad_out, enhanced, autocast=True)
    # The products really run in bf16 (forward and backward), the output is bf16 like
    # nn.Linear's, and every gradient lands in its fp32 leaf's dtype.
    assert products and set(products) == {torch.bfloat16}
    assert got[0].dtype == torch.bfloat16
    for leaf, grad in zip(leaves, got[1:]):
        if leaf is not None:
            assert grad.dtype == torch.float32 and grad.shape == leaf.shape
    want = _dense_reference(*args, grad_out, enhanced)
    tokens = grad_out.numel() // M
    _check_within_bound(got, want, _bound(args, grad_out, enhanced, tokens + M + N), NAMES)


@pytest.mark.parametrize("mode", MODES)
def test_bf16_mixed_is_not_fp32_in_disguise(mode):
    """The bf16 run differs from the fp32 run by bf16-sized, not fp32-sized, amounts."""
    args = _inputs((2, 11))
    grad_out = torch.randn(2, 11, M, generator=torch.Generator().manual_seed(5))
    mixed, _, _ = _run(mode, args, grad_out, True, autocast=True)
    plain, _, _ = _run(mode, args, grad_out, True, autocast=False)
    diff = (mixed[0].float() - plain[0]).abs().max().item()
    assert diff > 100 * FP32_U * plain[0].abs().max().item()


@pytest.mark.parametrize("mode", MODES)
def test_backward_inside_the_autocast_region_gives_the_same_gradients(mode):
    args = _inputs((13,))
    grad_out = torch.randn(13, M, generator=torch.Generator().manual_seed(5)).bfloat16()
    outside, _, _ = _run(mode, args, grad_out, True, autocast=True)
    leaves = [t.detach().clone().requires_grad_() for t in (args[0], args[3], args[4], args[5])]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spectral_linear(leaves[0], args[1], args[2], leaves[1], leaves[2], leaves[3], args[6],
                        args[7], None if args[8] is None else args[8], mode=mode
                        ).backward(grad_out)
    for got, want in zip([t.grad for t in leaves], outside[1:]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enhanced", [True, False])
def test_pure_bf16_parameters_give_bf16_gradients_within_the_bound(mode, enhanced):
    args = _inputs((2, 11), dtype=torch.bfloat16)
    grad_out = torch.randn(2, 11, M, generator=torch.Generator().manual_seed(5)).bfloat16()
    got, products, leaves = _run(mode, args, grad_out, enhanced, autocast=False)
    assert set(products) == {torch.bfloat16} and got[0].dtype == torch.bfloat16
    for leaf, grad in zip(leaves, got[1:]):
        assert grad.dtype == torch.bfloat16 and grad.shape == leaf.shape
    want = _dense_reference(*args, grad_out, enhanced)
    _check_within_bound(got, want, _bound(args, grad_out, enhanced, 22 + M + N), NAMES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("autocast", [True, False], ids=["bf16-mixed", "fp32"])
def test_fixed_operand_input_under_autocast(mode, autocast):
    """A SparseRows input (graph models): no bf16 CSR kernel, so its products stay fp32."""
    x, *rest = _inputs((20,))
    x = x * (torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.2)
    operand = SparseRows(x)
    grad_out = torch.randn(20, M, generator=torch.Generator().manual_seed(5)).bfloat16().float()
    got, products, _ = _run(mode, (operand, *rest), grad_out, True, autocast=autocast)
    expected = torch.bfloat16 if autocast else torch.float32
    assert products and set(products) == {expected} and got[0].dtype == expected
    assert got[1] is None and all(g.dtype == torch.float32 for g in got[2:])
    want = _dense_reference(x, *rest, grad_out, True)
    want[1] = None  # data gets no gradient
    _check_within_bound(got, want, _bound((x, *rest), grad_out, True, 20 + M + N), NAMES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enhanced", [True, False])
@pytest.mark.parametrize("autocast", [True, False], ids=["bf16-mixed", "fp32"])
def test_bf16_frozen_factors_match_float64_on_the_same_rounded_factors(mode, enhanced, autocast):
    """SST's ``frozen_dtype="bfloat16"``: frozen factors bf16, everything else fp32.

    The reference uses the same bf16 values in float64, so storing them in bf16 costs no
    accuracy beyond that rounding: fp32 arithmetic stays within the fp32 bound.
    """
    x, U_frozen, Vh_frozen, *rest = _inputs((2, 11))
    args = (x, U_frozen.bfloat16(), Vh_frozen.bfloat16(), *rest)
    grad_out = torch.randn(2, 11, M, generator=torch.Generator().manual_seed(5))
    grad_out = grad_out.bfloat16().float()
    got, products, leaves = _run(mode, args, grad_out, enhanced, autocast=autocast)
    compute = torch.bfloat16 if autocast else torch.float32
    assert products and set(products) == {compute} and got[0].dtype == compute
    assert all(g.dtype == torch.float32 for g in got[1:] if g is not None)
    want = _dense_reference(*args, grad_out, enhanced)
    unit = BF16_U if autocast else FP32_U
    _check_within_bound(got, want, _bound(args, grad_out, enhanced, 22 + M + N, unit), NAMES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enhanced", [True, False])
@pytest.mark.parametrize("shape", [(13,), (2, 11)], ids=["2d", "3d"])
def test_fp16_mixed_matches_float64_within_the_fp16_bound(mode, enhanced, shape):
    """``fp16-mixed``: CPU autocast in float16; the Functions follow autocast's dtype."""
    args = _inputs(shape)
    grad_out = torch.randn(*shape, M, generator=torch.Generator().manual_seed(5))
    grad_out = grad_out.half().float()  # the fp16 output's gradient is fp16 anyway
    got, products, leaves = _run(mode, args, grad_out, enhanced, autocast=True,
                                 dtype=torch.float16)
    assert products and set(products) == {torch.float16} and got[0].dtype == torch.float16
    for leaf, grad in zip(leaves, got[1:]):
        assert grad.dtype == torch.float32 and grad.shape == leaf.shape
    want = _dense_reference(*args, grad_out, enhanced)
    tokens = grad_out.numel() // M
    bound = _bound(args, grad_out, enhanced, tokens + M + N, unit=FP16_U)
    _check_within_bound(got, want, bound, NAMES)
    # ... and it is not the bf16 bound in disguise: fp16 errors are 8x smaller.
    bf16, _, _ = _run(mode, args, grad_out, enhanced, autocast=True)
    assert (got[0].double() - want[0]).abs().max() < (bf16[0].double() - want[0]).abs().max()


def test_the_bound_catches_a_wrong_s_factor(monkeypatch):
    """The bound is tight enough: U_active's enhanced gradient times s_i fails it."""
    from sparse_spectral.spectral import function

    original = function._cast_grads
    args = _inputs((2, 11))

    def buggy(ctx, grads):
        s_active = args[3].index_select(0, args[6]).to(grads[4].dtype)
        return original(ctx, (*grads[:4], grads[4] * s_active, *grads[5:]))

    monkeypatch.setattr(function, "_cast_grads", buggy)
    grad_out = torch.randn(2, 11, M, generator=torch.Generator().manual_seed(5))
    grad_out = grad_out.bfloat16().float()
    got, _, _ = _run("factored", args, grad_out, True, autocast=True)
    want = _dense_reference(*args, grad_out, True)
    with pytest.raises(AssertionError, match="dU_active"):
        _check_within_bound(got, want, _bound(args, grad_out, True, 22 + M + N), NAMES)


# ---------------------------------------------------------------------- whole methods
def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(64, 12, generator=g), torch.randint(0, 5, (64,), generator=g)


@pytest.mark.parametrize("name, options", [
    ("full", {}), ("lora", {"rank": 4}), ("relora", {"rank": 4, "merge_interval": 2}),
    ("galore", {"rank": 4}),
    ("sst", {"rank": 4, "forward_mode": "factored"}),
    ("sst", {"rank": 4, "forward_mode": "composed"})],
    ids=["full", "lora", "relora", "galore", "sst-factored", "sst-composed"])
def test_methods_run_under_cpu_autocast(name, options):
    torch.manual_seed(0)
    method = make_method(name, **options)
    model = method.prepare(TinyMLP(d_in=12, width=16))
    optimizer = method.build_optimizer(model, lr=1e-2)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in model.parameters())
    for p in trained:
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
    optimizer.step()
    method.after_step(1, optimizer)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _train_sst(forward_mode, autocast, steps=12):
    """Losses of a few SST steps on TinyMLP, everything (after_step too) inside autocast."""
    torch.manual_seed(0)
    # T3 = 2 and the default T2 = ceil(k / r): swaps and re-SVDs both happen within 12 steps.
    method = make_method("sst", rank=4, iteration_interval=2, forward_mode=forward_mode)
    model = method.prepare(TinyMLP(d_in=12, width=16))
    optimizer = method.build_optimizer(model, lr=3e-2)
    x, y = _batch()
    layers = [m for m in model.modules() if isinstance(m, SpectralLinear)]
    resvds = []
    for layer in layers:
        def counting(*args, _original=layer.resvd_, **kwargs):
            resvds.append(1)
            return _original(*args, **kwargs)

        layer.resvd_ = counting
    losses = []
    for step in range(1, steps + 1):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            # The state changes inside the region too: they must not drop to bf16.
            method.after_step(step, optimizer)
        losses.append(loss.item())
    assert resvds, "no re-SVD ran: the test would not cover it"
    return layers, losses


@pytest.mark.parametrize("forward_mode", MODES)
def test_sst_trains_under_cpu_autocast_and_keeps_fp32_factors(forward_mode):
    layers, losses = _train_sst(forward_mode, autocast=True)
    _, reference = _train_sst(forward_mode, autocast=False)
    assert losses[-1] < 0.85 * losses[0]
    # A sanity check, not a bound: the bf16 trajectory follows the fp32 one.
    assert losses == pytest.approx(reference, rel=0.02)
    for layer in layers:
        for p in (layer.s, layer.U_active, layer.Vh_active, layer.U_frozen, layer.Vh_frozen):
            assert p.dtype == torch.float32 and torch.isfinite(p).all()
        # Active vectors are unit-norm to fp32 precision, not bf16's.
        norms = layer.U_active.norm(dim=0)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-6)


def test_resvd_inside_autocast_keeps_the_weight_to_fp32_precision():
    torch.manual_seed(0)
    layer = SpectralLinear.from_linear(nn.Linear(24, 16), 4)
    before = layer.dense_weight()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.dense_weight().dtype == torch.float32
        layer.resvd_()
    torch.testing.assert_close(layer.dense_weight(), before, rtol=0, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_matches_the_cpu_float64_reference(mode, dtype):
    unit = {torch.bfloat16: BF16_U, torch.float16: 2.0**-11}[dtype]
    args = [t.cuda() for t in _inputs((2, 11))]
    grad_out = torch.randn(2, 11, M, generator=torch.Generator().manual_seed(5)).to(dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (args[0], args[3], args[4], args[5],
                                                            args[8])]
    xl, sl, ual, vhl, bl = leaves
    with torch.autocast("cuda", dtype=dtype):
        y = spectral_linear(xl, args[1], args[2], sl, ual, vhl, args[6], args[7], bl, mode=mode)
    assert y.dtype == dtype
    y.backward(grad_out.cuda())
    got = [y.detach().cpu()] + [t.grad.cpu() for t in leaves]
    assert all(t.grad.dtype == torch.float32 for t in leaves)
    cpu_args = [t.cpu() for t in args]
    want = _dense_reference(*cpu_args, grad_out.float(), True)
    absolute = [a.abs() if a.is_floating_point() else a for a in cpu_args]
    scale = ROUNDINGS * unit + (22 + M + N) * FP32_U
    bound = [scale * p for p in _dense_reference(*absolute, grad_out.float().abs(), True)]
    _check_within_bound(got, want, bound, NAMES)
