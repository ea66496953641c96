"""Aten ops per SST layer call, against nn.Linear's: a guard against op-count regressions.

On a GPU every dispatched op costs launch and dispatch time whatever its size, so at
LLaMA-130M scale SST's step time follows its op count (benchmarks/op_count.py). Two checks
per evaluation mode, precision and layout:

* the number of matrix products is exactly the method's: factored 4 forward (``Vh x`` and
  ``U (s z)`` for the frozen and the active pairs) + 6 backward (``dy U`` for both parts,
  the input gradient's two products, ``G v_i`` and ``G^T u_i``); composed 3 forward
  (composing ``W``: one product per part, then the dense layer) + 5 backward (input
  gradient, ``G``, ``G v_i``, ``G^T u_i``, and one sandwich ``U_frozen^T G`` for the frozen
  singular values' gradients). An extra product is wasted time at any scale;
* the total is at most nn.Linear's ops per product times SST's products: each product may
  carry as much overhead (operand and gradient casts, reshapes, gradient accumulation) as
  PyTorch's own dense layer spends on one, and no more; plus, where the frozen factors are
  stored in another dtype than the call computes in, the four casts that layout costs by
  design (each frozen factor cast on use, in forward and again in backward). Before the
  op-count work the composed backward ran its sandwich in four row blocks with a cast per
  block (11 products, about 10 ops per product under bf16 autocast against nn.Linear's 8):
  every composed case here failed.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sparse_spectral.spectral.layer import SpectralLinear

_PRODUCTS = {"mm", "addmm", "addmm_", "bmm", "baddbmm", "matmul"}
PRODUCTS_PER_CALL = {"factored": 4 + 6, "composed": 3 + 5}


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.products += func._schema.name.removeprefix("aten::") in _PRODUCTS
        return func(*args, **(kwargs or {}))


def _count_call(layer: torch.nn.Module, bf16: bool) -> _Count:
    """Ops of one forward and backward of ``layer`` on a ``(2, 16, 32)`` input."""
    x = torch.randn(2, 16, 32, requires_grad=True, generator=torch.Generator().manual_seed(0))
    grad = torch.ones(2, 16, layer.out_features)
    if bf16:
        grad = grad.bfloat16()
    with _Count() as counter:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.backward(grad)
    assert x.grad is not None
    return counter


@pytest.mark.parametrize("frozen_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-mixed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("mode", ["factored", "composed"])
def test_ops_per_call_within_nn_linears_budget_per_product(mode, bias, bf16, frozen_dtype):
    torch.manual_seed(0)
    dense = torch.nn.Linear(32, 48, bias=bias)
    reference = _count_call(dense, bf16)
    assert reference.products == 3  # forward, input gradient, weight gradient
    layer = SpectralLinear.from_linear(dense, 8, forward_mode=mode, frozen_dtype=frozen_dtype)
    sst = _count_call(layer, bf16)
    assert all(p.grad is not None for p in (layer.s, layer.U_active, layer.Vh_active))
    assert sst.products == PRODUCTS_PER_CALL[mode]
    stored = frozen_dtype or torch.float32
    casts = 4 if stored != (torch.bfloat16 if bf16 else torch.float32) else 0
    budget = sst.products * reference.ops / reference.products + casts
    assert sst.ops <= budget, (f"{sst.ops} ops per {mode} call, over the budget of "
                               f"{budget:.1f} ({reference.ops} per {reference.products} "
                               "products in nn.Linear)")
