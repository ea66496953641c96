"""The read-only ``weight`` of converted layers (SpectralLinear, LoRALinear).

Models read ``.weight`` of their linear layers (T5 for a dtype check, nn.MultiheadAttention
to compute with it): the property must give the layer's dense weight in the replaced
module's layout, carry the gradients the layer's forward gives, and never make a converted
layer look like a plain linear one (targeting, state_dict, parameters).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_spectral import make_method
from sparse_spectral.linear import is_linear, linear_weight
from sparse_spectral.methods.lora import LoRALinear
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.targeting import find_target_modules

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _spectral(m=10, n=12, rank=3, seed=0, **kwargs) -> SpectralLinear:
    torch.manual_seed(seed)
    layer = SpectralLinear.from_linear(nn.Linear(n, m), rank, **kwargs)
    # A selection other than the first r indices, and factors no longer orthonormal, so
    # the composition has to respect idx/frozen_idx and s.
    layer.swap_(torch.tensor([1, 4, 7][:rank]))
    with torch.no_grad():
        layer.U_active.add_(0.1 * torch.randn_like(layer.U_active))
        layer.s.mul_(torch.linspace(0.5, 1.5, layer.k))
    return layer


def _grads(layer: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {name: p for name, p in layer.named_parameters() if p.requires_grad}
    return dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


def _functional_and_forward_grads(layer: nn.Module, x: torch.Tensor):
    target = torch.randn(x.shape[0], layer.out_features, generator=torch.Generator()
                         .manual_seed(1))
    via_weight = nn.functional.linear(x, layer.weight, layer.bias)
    via_forward = layer(x)
    torch.testing.assert_close(via_weight, via_forward, rtol=0, atol=1e-5)
    return (_grads(layer, (via_weight * target).sum()),
            _grads(layer, (via_forward * target).sum()))


def test_spectral_weight_is_the_dense_weight():
    layer = _spectral()
    assert layer.weight.shape == (10, 12)
    torch.testing.assert_close(layer.weight.detach(), layer.dense_weight(), rtol=0, atol=1e-6)
    assert layer.weight.dtype == layer.s.dtype and layer.weight.requires_grad
    with torch.no_grad():
        assert not layer.weight.requires_grad


@pytest.mark.parametrize("mode", ["factored", "composed"])
@pytest.mark.parametrize("settings", [{}, {"enhanced": False}, {"all_singular_values": False}])
def test_spectral_weight_carries_the_forward_gradients(mode, settings):
    """Computing with ``.weight`` trains s and the active pairs as forward() does."""
    layer = _spectral(forward_mode=mode, **settings)
    x = torch.randn(7, 12, generator=torch.Generator().manual_seed(0))
    via_weight, via_forward = _functional_and_forward_grads(layer, x)
    assert via_weight.keys() == {"s", "U_active", "Vh_active", "bias"}
    for name in via_weight:
        torch.testing.assert_close(via_weight[name], via_forward[name], rtol=1e-5, atol=1e-6)
    if not settings.get("all_singular_values", True):  # only the sampled values move
        assert via_weight["s"][layer.frozen_idx].abs().max() == 0


def test_spectral_weight_from_conv1d_has_conv1d_layout():
    torch.manual_seed(0)
    conv = Conv1D(10, 6)  # weight (in, out) = (6, 10)
    nn.init.normal_(conv.weight, std=0.2)
    layer = SpectralLinear.from_linear(conv, 2)
    assert layer.weight.shape == (6, 10)
    torch.testing.assert_close(layer.weight.detach(), conv.weight, rtol=0, atol=1e-6)


def test_spectral_weight_under_autocast_keeps_the_factor_dtype():
    layer = _spectral()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.weight.dtype == torch.float32


def _lora(conv1d: bool = False) -> LoRALinear:
    torch.manual_seed(0)
    base = Conv1D(10, 12) if conv1d else nn.Linear(12, 10)
    layer = LoRALinear(base, rank=3, alpha=6.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_()  # B = 0 at initialisation would hide the update
    return layer


@pytest.mark.parametrize("conv1d", [False, True])
def test_lora_weight_is_the_effective_weight(conv1d):
    layer = _lora(conv1d)
    delta = 2.0 * layer.lora_B @ layer.lora_A  # (alpha / r) B A, (m, n)
    expected = layer.base.weight + (delta.t() if conv1d else delta)
    assert layer.weight.shape == layer.base.weight.shape
    torch.testing.assert_close(layer.weight, expected, rtol=0, atol=1e-6)
    assert layer.bias is layer.base.bias


def test_lora_weight_carries_the_forward_gradients():
    layer = _lora()
    via_weight, via_forward = _functional_and_forward_grads(layer, torch.randn(7, 12))
    assert via_weight.keys() == {"lora_A", "lora_B"}
    for name in via_weight:
        torch.testing.assert_close(via_weight[name], via_forward[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer_fn", [_spectral, _lora])
def test_weight_is_no_parameter_and_cannot_be_assigned(layer_fn):
    layer = layer_fn()
    assert not any(name.endswith("weight") and "." not in name
                   for name in layer.state_dict())
    assert all(p is not layer.weight for p in layer.parameters())
    with pytest.raises((AttributeError, KeyError)):
        layer.weight = nn.Parameter(torch.zeros(10, 12))


@pytest.mark.parametrize("layer_fn", [_spectral, _lora])
def test_converted_layer_is_not_mistaken_for_a_linear_one(layer_fn):
    layer = layer_fn()
    assert not is_linear(layer)
    with pytest.raises(TypeError, match=type(layer).__name__):
        linear_weight(layer)
    model = nn.Sequential(layer, nn.Linear(10, 4))
    found = [name for name, _ in find_target_modules(model)]
    # The converted layer is never a target itself (LoRA's frozen base, "0.base", is a
    # plain nn.Linear and still is: targeting knows no method's wrapper).
    assert "0" not in found and "1" in found


class _Attention(nn.Module):
    """nn.MultiheadAttention computes with ``out_proj.weight`` (its functional form)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("name", ["sst", "lora"])
def test_multihead_attention_out_proj_converts_and_trains(name):
    torch.manual_seed(0)
    model = _Attention()
    x = torch.randn(2, 5, 16)
    reference = model(x).detach()
    method = make_method(name, rank=4)
    model = method.prepare(model)
    assert [n for n, _ in method.layers] == ["attn.out_proj"]
    torch.testing.assert_close(model(x), reference, rtol=0, atol=1e-5)
    model(x).pow(2).sum().backward()
    trained = ("s", "U_active", "Vh_active") if name == "sst" else ("lora_A", "lora_B")
    grads = [getattr(model.attn.out_proj, p).grad for p in trained]
    # LoRA's A gets no gradient while B = 0 (its gradient is B^T G); B gets one.
    assert all(g is not None for g in grads) and grads[-1].abs().sum() > 0
