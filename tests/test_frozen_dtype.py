"""SST with its frozen factors stored in bf16 (``frozen_dtype``) beside fp32 active state.

Numerics: outputs and gradients against a float64 reference built from the same
(bf16-rounded) factors (under autocast: tests/test_precision.py); state changes (swap,
re-SVD) keep each tensor's dtype and round exactly where they must; bytes, merge, pruning,
serialization and exact resume.
"""

from __future__ import annotations

import io

import pytest
import torch
from conftest import TinyMLP, tiny_llama
from torch import nn

from sparse_spectral import load_pretrained, make_method, method_from_state, save_pretrained
from sparse_spectral.accounting import memory_report, planned_state_bytes
from sparse_spectral.cli import build_parser
from sparse_spectral.cli.flags import settings_from_args
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.spectral.layer import thin_svd
from sparse_spectral.spectral.lowrank import LowRankLinear
from sparse_spectral.spectral.pruning import prune_spectrum
from sparse_spectral.tasks.registry import get_task

BF16 = torch.bfloat16
FP32_TOL = 2e-6  # relative: fp32 arithmetic on bf16-valued factors (a few roundings of 2^-24)


def _layer(mode="factored", seed=0, m=9, n=7, rank=3, enhanced=True) -> SpectralLinear:
    torch.manual_seed(seed)
    layer = SpectralLinear.from_linear(nn.Linear(n, m), rank, enhanced=enhanced,
                                       forward_mode=mode, frozen_dtype=BF16)
    # A selection that is not the leading block, and active vectors off their SVD values.
    layer.swap_(torch.tensor([4, 0, 2][:rank]))
    with torch.no_grad():
        layer.U_active.add_(0.01 * torch.randn_like(layer.U_active))
    return layer


def _reference(layer: SpectralLinear, x: torch.Tensor, grad_out: torch.Tensor):
    """Float64 autograd on ``x W^T + b`` with W from the layer's stored (bf16) factors."""
    s = layer.s.detach().double().requires_grad_()
    Ua = layer.U_active.detach().double().requires_grad_()
    Vha = layer.Vh_active.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_()
    xl = x.double().requires_grad_()
    U = torch.zeros(layer.out_features, layer.k, dtype=torch.float64)
    U = U.index_copy(1, layer.frozen_idx, layer.U_frozen.double()).index_copy(1, layer.idx, Ua)
    Vh = torch.zeros(layer.k, layer.in_features, dtype=torch.float64)
    Vh = Vh.index_copy(0, layer.frozen_idx, layer.Vh_frozen.double()).index_copy(0, layer.idx,
                                                                                Vha)
    y = xl @ ((U * s) @ Vh).t() + b
    y.backward(grad_out.double())
    s_active = s.detach()[layer.idx]
    scale = s_active if layer.enhanced else torch.ones_like(s_active)
    return [y.detach(), xl.grad, s.grad, Ua.grad / scale, Vha.grad / scale.unsqueeze(1), b.grad]


def _run(layer: SpectralLinear, x: torch.Tensor, grad_out: torch.Tensor, autocast: bool):
    xl = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        y = layer(xl)
    y.backward(grad_out.to(y.dtype))
    return [y.detach(), xl.grad, layer.s.grad, layer.U_active.grad, layer.Vh_active.grad,
            layer.bias.grad]


@pytest.mark.parametrize("mode", ["factored", "composed"])
@pytest.mark.parametrize("enhanced", [True, False])
def test_forward_and_gradients_match_float64_on_the_same_bf16_factors(mode, enhanced):
    layer = _layer(mode, enhanced=enhanced)
    assert layer.U_frozen.dtype == layer.Vh_frozen.dtype == BF16
    assert layer.s.dtype == layer.U_active.dtype == torch.float32
    g = torch.Generator().manual_seed(1)
    x, grad_out = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 9, generator=g)
    got = _run(layer, x, grad_out, autocast=False)
    want = _reference(layer, x, grad_out)
    assert got[0].dtype == torch.float32 and layer.U_frozen.grad is None
    for name, a, b in zip(("y", "dx", "ds", "dU", "dVh", "db"), got, want):
        assert a.dtype == torch.float32, name
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=0, atol=FP32_TOL * scale, msg=name)


@pytest.mark.parametrize("mode", ["factored", "composed"])
def test_backward_keeps_the_stored_bf16_factors_not_fp32_copies(mode):
    """Only the stored tensors are saved: no fp32 copy of a frozen factor outlives forward."""
    layer = _layer(mode)
    frozen_shapes = {tuple(layer.U_frozen.shape), tuple(layer.Vh_frozen.shape)}
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(torch.randn(5, 7))
    y.sum().backward()
    frozen_saved = [dtype for shape, dtype in saved if shape in frozen_shapes]
    assert frozen_saved and set(frozen_saved) == {BF16}


def test_swap_rounds_leaving_vectors_to_bf16_and_upcasts_entering_ones_exactly():
    layer = _layer()
    U_active, Vh_active = layer.U_active.detach().clone(), layer.Vh_active.detach().clone()
    old_idx = layer.idx.tolist()  # a permutation of [4, 0, 2]
    slot = old_idx.index(2)  # the slot whose vector leaves
    column = layer.frozen_idx.tolist().index(5)
    entering_U = layer.U_frozen[:, column].clone()
    entering_Vh = layer.Vh_frozen[column].clone()
    slots = layer.swap_(torch.tensor([4, 0, 5]))
    assert slots.tolist() == [slot] and layer.idx[slot] == 5
    assert layer.U_frozen.dtype == BF16 and layer.U_active.dtype == torch.float32
    assert torch.equal(layer.U_active[:, slot], entering_U.float())
    assert torch.equal(layer.Vh_active[slot], entering_Vh.float())
    leaving = layer.frozen_idx.tolist().index(2)
    assert torch.equal(layer.U_frozen[:, leaving], U_active[:, slot].to(BF16))
    assert torch.equal(layer.Vh_frozen[leaving], Vh_active[slot].to(BF16))
    assert not torch.equal(U_active[:, slot].to(BF16).float(), U_active[:, slot])  # it rounds
    kept = [i for i in range(3) if i != slot]  # the kept slots do not change at all
    assert torch.equal(layer.U_active[:, kept], U_active[:, kept])


def test_resvd_composes_in_fp32_and_rounds_only_the_frozen_factors():
    layer = _layer()
    W = layer.dense_weight(torch.float32)  # from every factor, frozen ones upcast
    U, s, Vh = thin_svd(W)
    layer.resvd_()
    assert (layer.U_frozen.dtype, layer.Vh_frozen.dtype) == (BF16, BF16)
    assert layer.s.dtype == layer.U_active.dtype == layer.Vh_active.dtype == torch.float32
    assert torch.equal(layer.s, s)
    assert torch.equal(layer.U_active, U[:, layer.idx])
    assert torch.equal(layer.U_frozen, U[:, layer.frozen_idx].to(BF16))
    assert torch.equal(layer.Vh_frozen, Vh[layer.frozen_idx].to(BF16))


def test_effective_factors_dense_weight_and_merge_are_fp32():
    layer = _layer()
    U, s, Vh = layer.effective_factors()
    assert U.dtype == Vh.dtype == torch.float32
    assert torch.equal(U[:, layer.frozen_idx], layer.U_frozen.float())
    dense = layer.to_linear()
    assert dense.weight.dtype == torch.float32
    torch.testing.assert_close(dense.weight, (U * s) @ Vh, rtol=0, atol=1e-6)
    x = torch.randn(4, 7)
    torch.testing.assert_close(dense(x), layer(x), rtol=0, atol=1e-5)


def test_pruning_returns_fp32_factors():
    model = make_method("sst", rank=2, frozen_dtype="bfloat16",
                        exclude_modules=["head"]).prepare(TinyMLP())
    pruned = prune_spectrum(model, 0.5)
    low = [m for m in pruned.modules() if isinstance(m, LowRankLinear)]
    assert low and all(m.A.dtype == m.B.dtype == torch.float32 for m in low)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_module_to_dtype_keeps_the_frozen_dtype(dtype):
    layer = _layer()
    frozen = layer.U_frozen.detach().clone()
    layer.to(dtype)
    assert layer.U_frozen.dtype == layer.Vh_frozen.dtype == BF16
    assert layer.s.dtype == layer.U_active.dtype == dtype
    assert torch.equal(layer.U_frozen, frozen)  # the round trip through dtype is exact
    plain = SpectralLinear.from_linear(nn.Linear(7, 9), 3).double()
    assert plain.U_frozen.dtype == torch.float64  # without frozen_dtype everything casts


def test_bad_frozen_dtype_names_the_value():
    with pytest.raises(ValueError, match=r"frozen_dtype='int8' is unknown; allowed: None, "
                                         r"bfloat16, float16, float32"):
        make_method("sst", frozen_dtype="int8")
    with pytest.raises(ValueError, match=r"frozen_dtype=torch.int32 must be None or a floating"):
        SpectralLinear.from_linear(nn.Linear(7, 9), 3, frozen_dtype=torch.int32)


def test_flag_reaches_the_method_options():
    args = build_parser().parse_args(["train", "lm", "--method", "sst",
                                      "--frozen_dtype", "bfloat16"])
    settings, _, _ = settings_from_args(args, get_task("lm").settings_class)
    assert settings.method.options == {"frozen_dtype": "bfloat16"}


# ---------------------------------------------------------------------- bytes
def _frozen_numbers(model) -> int:
    return sum(layer.U_frozen.numel() + layer.Vh_frozen.numel()
               for layer in model.modules() if isinstance(layer, SpectralLinear))


def test_planned_and_measured_bytes_count_bf16_frozen_factors():
    default = make_method("sst", rank=4).prepare(tiny_llama())
    method = make_method("sst", rank=4, frozen_dtype="bfloat16")
    model = method.prepare(tiny_llama())
    plan, plan_default = planned_state_bytes(model), planned_state_bytes(default)
    assert plan.weights == plan_default.weights - 2 * _frozen_numbers(model)
    assert (plan.gradients, plan.optimizer_state) == (plan_default.gradients,
                                                      plan_default.optimizer_state)
    with torch.device("meta"):
        meta = tiny_llama()
    meta = make_method("sst", rank=4, frozen_dtype="bfloat16").prepare(meta)
    assert planned_state_bytes(meta) == plan
    optimizer = method.build_optimizer(model, lr=1e-3)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    real = memory_report(model, optimizer)
    assert real.weights == plan.weights and real.gradients == plan.gradients


# ---------------------------------------------------------------------- saving, resume
def _train(model, method, optimizer, first, last):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)
    for step in range(first, last + 1):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(step, optimizer)


def _prepared(seed=0):
    torch.manual_seed(seed)
    method = make_method("sst", rank=2, iteration_interval=2, frozen_dtype="bfloat16",
                         exclude_modules=["head"])
    model = method.prepare(TinyMLP())
    return model, method, method.build_optimizer(model, lr=1e-2)


def test_save_load_round_trip_restores_bf16_frozen_factors(tmp_path):
    model, method, optimizer = _prepared()
    _train(model, method, optimizer, 1, 5)  # swaps and a re-SVD: T3 = 2
    save_pretrained(model, method, tmp_path)
    torch.manual_seed(7)
    loaded, loaded_method = load_pretrained(TinyMLP(), tmp_path)
    assert loaded_method.config.frozen_dtype == "bfloat16"
    for (key, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), key
    assert loaded.blocks[0]["fc"].U_frozen.dtype == BF16
    x = torch.randn(3, 12)
    assert torch.equal(loaded(x), model(x))


def test_exact_resume_with_bf16_frozen_factors():
    k, j = 3, 4
    model, method, optimizer = _prepared()
    _train(model, method, optimizer, 1, k)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    method_state = method.state_dict()
    _train(model, method, optimizer, k + 1, k + j)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["model"]["blocks.0.fc.U_frozen"].dtype == BF16
    resumed_method = method_from_state(method_state)
    torch.manual_seed(9)
    resumed = resumed_method.prepare(TinyMLP())
    resumed.load_state_dict(saved["model"])
    resumed_method.load_state_dict(method_state)
    resumed_optimizer = resumed_method.build_optimizer(resumed, lr=1e-2)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    _train(resumed, resumed_method, resumed_optimizer, k + 1, k + j)
    for (key, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b), key


def test_a_state_saved_before_frozen_dtype_existed_still_loads():
    method = make_method("sst", rank=2, exclude_modules=["head"])
    method.prepare(TinyMLP())
    state = method.state_dict()
    del state["config"]["frozen_dtype"]
    method.load_state_dict(state)
    assert method_from_state(state).config.frozen_dtype is None
