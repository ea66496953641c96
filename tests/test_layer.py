"""SpectralLinear: conversion, the after-step rules, swaps, re-SVD and merging."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_spectral.spectral import SlotAdamW, SpectralLinear
from sparse_spectral.spectral.layer import normalize_layers_


def _layer(m=10, n=12, rank=3, seed=0, bias=True):
    torch.manual_seed(seed)
    dense = nn.Linear(n, m, bias=bias)
    return dense, SpectralLinear.from_linear(dense, rank)


def _optimizer(layer, lr=1e-2):
    return SlotAdamW([{"params": [layer.U_active, layer.Vh_active, layer.s],
                       "slot_dims": [1, 0, -1]}, {"params": [layer.bias]}], lr=lr)


def _train_step(layer, opt, seed):
    x = torch.randn(8, layer.in_features, generator=torch.Generator().manual_seed(seed))
    layer(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("shape", [(10, 12), (12, 10), (9, 9)])
def test_conversion_keeps_outputs(shape):
    dense, layer = _layer(*shape)
    x = torch.randn(4, 6, shape[1])
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=1e-5)
    k = min(shape)
    # Every singular vector is stored once: k - r frozen pairs plus r active ones.
    assert layer.U_frozen.shape == (shape[0], k - 3) and layer.Vh_frozen.shape == (k - 3, shape[1])
    assert layer.U_active.shape == (shape[0], 3) and layer.Vh_active.shape == (3, shape[1])
    assert sorted(layer.idx.tolist() + layer.frozen_idx.tolist()) == list(range(k))


def test_layout_frozen_parameters_not_buffers():
    _, layer = _layer()
    params = dict(layer.named_parameters())
    assert not params["U_frozen"].requires_grad and not params["Vh_frozen"].requires_grad
    assert all(params[n].requires_grad for n in ("s", "U_active", "Vh_active", "bias"))
    assert dict(layer.named_buffers()).keys() == {"idx", "frozen_idx"}


def test_from_shape_uses_the_initialiser():
    torch.manual_seed(0)
    layer = SpectralLinear.from_shape(6, 4, rank=2, init=lambda w: nn.init.constant_(w, 0.5))
    torch.testing.assert_close(layer.dense_weight(), torch.full((4, 6), 0.5), atol=1e-6, rtol=0)
    assert layer.bias is not None and layer.s[0] > 0 and layer.s[1:].abs().max() < 1e-5


def test_float64_svd_is_allowed():
    dense = nn.Linear(6, 5, dtype=torch.float64)
    layer = SpectralLinear.from_linear(dense, 2, svd_dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=1e-12)


def test_step_changes_only_active_vectors_and_s():
    _, layer = _layer()
    opt = _optimizer(layer)
    before = {n: t.detach().clone() for n, t in layer.state_dict().items()}
    _train_step(layer, opt, seed=1)
    layer.normalize_()
    after = layer.state_dict()
    for name in ("U_frozen", "Vh_frozen", "idx", "frozen_idx"):
        assert torch.equal(after[name], before[name]), name
    for name in ("U_active", "Vh_active", "s", "bias"):
        assert not torch.equal(after[name], before[name]), name
    torch.testing.assert_close(layer.U_active.norm(dim=0), torch.ones(3))
    torch.testing.assert_close(layer.Vh_active.norm(dim=1), torch.ones(3))


def test_normalize_clamps_singular_values():
    _, layer = _layer()
    with torch.no_grad():
        layer.s[1] = -0.3
        layer.U_active.mul_(2.0)
    layer.normalize_()
    assert (layer.s >= 0).all() and layer.s[1] == 0
    torch.testing.assert_close(layer.U_active.norm(dim=0), torch.ones(3))


def test_normalize_layers_is_each_layers_normalize_exactly():
    """The foreach form over layers of several shapes gives the per-tensor formula's bits:
    clamped ``s``, columns / rows divided by their norms, a zero vector left at zero."""
    layers = [_layer(*shape, rank=rank, seed=i)[1]
              for i, (shape, rank) in enumerate([((10, 12), 3), ((12, 10), 4), ((9, 9), 2)])]
    with torch.no_grad():
        for layer in layers:
            layer.s.sub_(0.2)  # some negative
            layer.U_active.mul_(torch.linspace(0.5, 3.0, layer.rank))
            layer.Vh_active.mul_(1.7)
        layers[1].U_active[:, 2] = 0
    expected = []
    for layer in layers:
        s, U, Vh = (t.detach().clone() for t in (layer.s, layer.U_active, layer.Vh_active))
        expected.append((s.clamp(min=0), U / U.norm(dim=0, keepdim=True).clamp_min(1e-12),
                         Vh / Vh.norm(dim=1, keepdim=True).clamp_min(1e-12)))
    assert (expected[0][0] == 0).any()
    normalize_layers_(layers)
    for layer, (s, U, Vh) in zip(layers, expected):
        assert torch.equal(layer.s, s)
        assert torch.equal(layer.U_active, U) and torch.equal(layer.Vh_active, Vh)
    assert torch.equal(layers[1].U_active[:, 2], torch.zeros(12))
    normalize_layers_([])  # nothing to do


def test_resvd_keeps_weight_and_restores_orthonormal_factors():
    _, layer = _layer(rank=4)
    opt = _optimizer(layer, lr=5e-2)
    for step in range(5):
        _train_step(layer, opt, seed=step)
        layer.normalize_()
    weight = layer.dense_weight()
    U_eff, _, Vh_eff = layer.effective_factors()
    eye = torch.eye(layer.k)
    assert (U_eff.t() @ U_eff - eye).abs().max() > 1e-3  # updates eroded orthogonality
    layer.resvd_(opt)
    torch.testing.assert_close(layer.dense_weight(), weight, rtol=0, atol=1e-5)
    U_eff, _, Vh_eff = layer.effective_factors()
    torch.testing.assert_close(U_eff.t() @ U_eff, eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(Vh_eff @ Vh_eff.t(), eye, rtol=0, atol=1e-5)
    assert (layer.s[:-1] >= layer.s[1:]).all()
    # All moments and step counters of U_active, Vh_active and s restart.
    for p in (layer.U_active, layer.Vh_active, layer.s):
        assert all(t.abs().sum() == 0 for t in opt.state[p].values())
    assert opt.state[layer.bias]["step"] == 5


def test_swap_writes_back_and_checks_out():
    _, layer = _layer(rank=3)
    opt = _optimizer(layer)
    _train_step(layer, opt, seed=0)
    layer.normalize_()
    weight = layer.dense_weight()
    old = layer.idx.tolist()
    live = {i: layer.U_active[:, j].clone() for j, i in enumerate(old)}
    fresh = [i for i in range(layer.k) if i not in old][:2]
    new = torch.tensor(sorted([old[0], *fresh]))
    slots = layer.swap_(new, opt)
    # The swap changes which vectors train, not the function.
    torch.testing.assert_close(layer.dense_weight(), weight, rtol=0, atol=1e-6)
    # Vectors that left went, trained, into the frozen factor (stored once, never copied).
    U_eff = layer.effective_factors()[0]
    for i in old:
        if i not in new.tolist():
            assert torch.equal(U_eff[:, i], live[i])
            column = layer.frozen_idx.tolist().index(i)
            assert torch.equal(layer.U_frozen[:, column], live[i])
    assert sorted(layer.idx.tolist()) == new.tolist()
    assert 0 not in slots.tolist() and len(slots) == 2
    assert torch.equal(layer.U_active[:, 0], live[old[0]])


def test_swap_rejects_bad_indices():
    _, layer = _layer(rank=3)
    with pytest.raises(ValueError, match="distinct"):
        layer.swap_(torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        layer.swap_(torch.tensor([1, 2, 10]))


@pytest.mark.parametrize("rank", [0, 11, -1])
def test_rank_out_of_range(rank):
    with pytest.raises(ValueError, match=rf"rank={rank}.*\[1, min\(m, n\) = 10\]"):
        SpectralLinear.from_linear(nn.Linear(12, 10), rank)


def test_to_linear_merges_exactly():
    dense, layer = _layer()
    opt = _optimizer(layer)
    _train_step(layer, opt, seed=0)
    layer.normalize_()
    merged = layer.to_linear()
    assert type(merged) is nn.Linear
    x = torch.randn(5, 12)
    torch.testing.assert_close(merged(x), layer(x), rtol=0, atol=1e-5)
    _, no_bias = _layer(bias=False)
    assert no_bias.to_linear().bias is None


def test_conv1d_round_trip():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(10, 6)  # nf=10 outputs, nx=6 inputs; weight (6, 10)
    nn.init.normal_(conv.weight, std=0.2)
    layer = SpectralLinear.from_linear(conv, 2)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-5)
    back = layer.to_linear()
    assert isinstance(back, Conv1D) and back.weight.shape == (6, 10)
    torch.testing.assert_close(back(x), conv(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- composed W kept per step
def _counting_composes(monkeypatch) -> list[int]:
    """Count calls of ``compose_weight`` (the composed mode's ``U diag(s) Vh`` product)."""
    from sparse_spectral.spectral import function

    calls = [0]
    original = function.compose_weight

    def counted(*args):
        calls[0] += 1
        return original(*args)

    monkeypatch.setattr(function, "compose_weight", counted)
    return calls


def _accumulated_grads(layer, batches, target):
    layer.zero_grad(set_to_none=True)
    for x in batches:
        ((layer(x) - target) ** 2).mean().backward()
    return [p.grad.clone() for p in (layer.s, layer.U_active, layer.Vh_active, layer.bias)]


def test_composed_weight_is_kept_across_micro_batches_and_never_stale(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    layer = SpectralLinear.from_linear(nn.Linear(12, 10), rank=3, forward_mode="composed")
    fresh = SpectralLinear.from_linear(nn.Linear(12, 10), rank=3, forward_mode="composed")
    fresh.reuse_composed_weight = False
    fresh.load_state_dict(layer.state_dict())
    batches = [torch.randn(5, 12, generator=gen) for _ in range(3)]
    target = torch.randn(5, 10, generator=gen)
    calls = _counting_composes(monkeypatch)

    kept = _accumulated_grads(layer, batches, target)
    assert calls[0] == 1  # one W for the three micro-batches
    recomposed = _accumulated_grads(fresh, batches, target)
    assert calls[0] == 4  # ... where the uncached layer composes per call
    for a, b in zip(kept, recomposed):
        assert torch.equal(a, b)  # bit for bit: the same W

    def same_output():  # the layer's W is the one its factors compose now
        fresh.load_state_dict(layer.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(layer(batches[0]), fresh(batches[0]), rtol=0, atol=0)

    # Every kind of change recomposes: an optimizer step, a swap, a re-SVD, a load.
    optimizer = SlotAdamW([layer.s, layer.U_active, layer.Vh_active, layer.bias], lr=0.1)
    optimizer.step()
    before = calls[0]
    same_output()
    assert calls[0] == before + 2  # layer and fresh both composed
    layer.swap_(torch.tensor([4, 0, 7]))
    same_output()
    layer.resvd_()
    same_output()
    other = SpectralLinear.from_linear(nn.Linear(12, 10), rank=3)
    layer.load_state_dict(other.state_dict())
    same_output()
    with torch.no_grad():  # a .data assignment (new storage) too
        layer.s.data = layer.s.data * 2
    same_output()
    # Evaluation never keeps a W; release_composed_weight drops the kept one.
    layer.eval()
    before = calls[0]
    with torch.no_grad():
        layer(batches[0]), layer(batches[1])
    assert calls[0] == before + 2
    layer.train()
    layer(batches[0])
    assert layer._weight_cache._weight is not None
    layer.release_composed_weight()
    assert layer._weight_cache._weight is None


def test_composed_weight_follows_the_compute_dtype(monkeypatch):
    layer = SpectralLinear.from_linear(nn.Linear(8, 6), rank=2, forward_mode="composed")
    calls = _counting_composes(monkeypatch)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = layer(x)
    high = layer(x)  # fp32 now: a W of its own dtype, not the bf16 one
    assert calls[0] == 2 and low.dtype == torch.bfloat16 and high.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), low) and calls[0] == 3
