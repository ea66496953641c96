"""sparse_spectral.linear: the linear module kinds and the fixed-operand protocol.

The protocol is exercised with :class:`DenseOperand`, a fixed operand that is not
:class:`~sparse_spectral.sparse_rows.SparseRows`: the layers that take operands must give
what they give for the tensor itself, without knowing the operand's type.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from sparse_spectral import linear
from sparse_spectral.linear import apply_linear, is_linear, linear_shape, operand_linear
from sparse_spectral.methods.lora import LoRALinear
from sparse_spectral.spectral import SpectralLinear

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


# --------------------------------------------------------------------------- module kinds
def test_linear_types_contains_linear_and_conv1d() -> None:
    assert linear.LINEAR_TYPES == (nn.Linear, Conv1D)


def test_is_linear() -> None:
    assert is_linear(nn.Linear(3, 4))
    assert is_linear(Conv1D(4, 3))
    assert not is_linear(nn.Conv1d(3, 4, 1))
    assert not is_linear(nn.Embedding(3, 4))
    assert not is_linear(nn.Sequential(nn.Linear(3, 4)))
    assert not is_linear("Linear")


def test_linear_shape_linear_and_conv1d() -> None:
    assert linear_shape(nn.Linear(3, 5)) == (5, 3)
    # Conv1D(nf=out, nx=in) stores weight as (in, out).
    conv = Conv1D(5, 3)
    assert tuple(conv.weight.shape) == (3, 5)
    assert linear_shape(conv) == (5, 3)
    torch.testing.assert_close(linear.linear_weight(conv), conv.weight.t(), rtol=0, atol=0)


def test_linear_shape_rejects_non_linear() -> None:
    with pytest.raises(TypeError, match="LayerNorm"):
        linear_shape(nn.LayerNorm(4))


def test_linear_types_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "transformers.pytorch_utils", None)
    assert linear._import_linear_types() == (nn.Linear,)
    assert not is_linear(Conv1D(4, 3))
    assert is_linear(nn.Linear(3, 4))


# --------------------------------------------------------------------------- the protocol
class DenseOperand:
    """A fixed operand backed by a dense ``(rows, features)`` tensor."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.shape = matrix.shape
        self.densified = 0

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        return self.matrix @ other

    def __rmatmul__(self, other: torch.Tensor) -> torch.Tensor:
        return other @ self.matrix

    def to_dense(self) -> torch.Tensor:
        self.densified += 1
        return self.matrix


def outputs_and_grads(layer: nn.Module, x) -> tuple[torch.Tensor, dict]:
    layer.zero_grad(set_to_none=True)
    y = apply_linear(layer, x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()
                        if p.grad is not None}


def layers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = nn.Linear(12, 7, dtype=torch.float64)
    lora = LoRALinear(nn.Linear(12, 7, dtype=torch.float64), rank=2, alpha=3.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    out = {"linear": base, "lora": lora}
    for mode in ("factored", "composed"):
        sst = SpectralLinear.from_linear(nn.Linear(12, 7, dtype=torch.float64), rank=2,
                                         svd_dtype=torch.float64)
        sst.forward_mode = mode
        out[f"sst-{mode}"] = sst
    return out


@pytest.mark.parametrize("name", ["linear", "lora", "sst-factored", "sst-composed"])
def test_layers_give_the_tensors_outputs_and_gradients_for_any_fixed_operand(name):
    layer = layers()[name]
    x = torch.randn(9, 12, dtype=torch.float64)
    operand = DenseOperand(x)
    y_tensor, g_tensor = outputs_and_grads(layer, x)
    y_operand, g_operand = outputs_and_grads(layer, operand)
    assert operand.densified == 0
    torch.testing.assert_close(y_operand, y_tensor, rtol=1e-12, atol=1e-12)
    assert g_operand.keys() == g_tensor.keys() and g_tensor
    for key in g_tensor:
        torch.testing.assert_close(g_operand[key], g_tensor[key], rtol=1e-12, atol=1e-12,
                                   msg=f"{name} {key}")


def test_spectral_layer_counts_an_operands_rows_as_tokens():
    layer = layers()["sst-factored"]
    layer.forward_mode = "auto"
    x = torch.randn(9, 12, dtype=torch.float64)
    assert layer.mode_for(DenseOperand(x)) == layer.mode_for(x)
    assert layer.mode_for(x.view(3, 3, 12)) == layer.mode_for(x)


def test_other_modules_get_the_dense_matrix():
    x = torch.randn(5, 4)
    operand = DenseOperand(x)
    subclass = type("MyLinear", (nn.Linear,), {})(4, 3)  # may change the forward: densify
    torch.testing.assert_close(apply_linear(subclass, operand), subclass(x))
    assert operand.densified == 1
    plain = nn.Linear(4, 3)
    torch.testing.assert_close(apply_linear(plain, operand), plain(x))
    torch.testing.assert_close(operand_linear(operand, plain.weight), x @ plain.weight.t())
    assert operand.densified == 1
