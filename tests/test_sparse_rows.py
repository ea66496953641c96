"""SparseRows: a fixed sparse input run in CSR gives what the dense input gives, every method.

The dense path is the reference: products and gradients against dense autograd, every
method's converted Lorentz layer on both inputs, the dropout mask, and whole training runs
of HyboNet on a bag-of-words graph with the sparse path switched on and off.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_hybonet_model import CASES, DIM, GRAPH, Graph

from sparse_spectral import make_method
from sparse_spectral.hyperbolic import LorentzLinear, build_hyperbolic_optimizer, expmap0
from sparse_spectral.hyperbolic.layers import SparseInputDropout
from sparse_spectral.hyperbolic.lorentz import centroid
from sparse_spectral.linear import apply_linear, operand_linear
from sparse_spectral.models.hybonet import (
    HYBONET_TARGETS,
    HyboNetGraphModel,
    train_graph_step,
)
from sparse_spectral.sparse_rows import SparseRows
from sparse_spectral.spectral import SpectralLinear

methods = pytest.mark.parametrize("name", sorted(CASES))


def options(name: str) -> dict:
    """The method's test settings; LoRA's scaling made != 1 so that it is exercised."""
    return {**CASES[name], **({"alpha": 3.0} if name in ("lora", "relora") else {})}


def bag_of_words(n: int, f: int, share: float = 0.05, seed: int = 0,
                 dtype=torch.float32) -> torch.Tensor:
    """``(n, f)`` non-negative rows with about ``share`` non-zeros, each row normalised."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, f, generator=gen) < share).to(dtype) * torch.rand(n, f, generator=gen,
                                                                            dtype=dtype)
    x[:, 0] += 1.0  # no empty row
    return x / x.sum(1, keepdim=True)


def lifted(n: int = 40, f: int = 60, dtype=torch.float32) -> torch.Tensor:
    x = bag_of_words(n, f, dtype=dtype)
    return expmap0(torch.cat([torch.zeros(n, 1, dtype=dtype), x], 1))


# --------------------------------------------------------------------------- the matrix
def test_products_and_new_values_match_the_dense_matrix():
    x = bag_of_words(30, 20, share=0.2, dtype=torch.float64)
    rows = SparseRows(x)
    assert rows.shape == x.shape and rows.values.numel() == int((x != 0).sum())
    torch.testing.assert_close(rows.to_dense(), x, rtol=0, atol=0)
    w, g = torch.randn(5, 20, dtype=torch.float64), torch.randn(30, 5, dtype=torch.float64)
    torch.testing.assert_close(rows.mm(w.t()), x @ w.t(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.t_mm(g), x.t() @ g, rtol=1e-12, atol=1e-12)
    # new values follow the row-major order of the non-zeros, in both stored orders
    values = torch.randn(rows.values.numel(), dtype=torch.float64)
    dense = torch.zeros(30 * 20, dtype=torch.float64)
    dense[x.reshape(-1).nonzero().squeeze(1)] = values
    dense = dense.view(30, 20)
    changed = rows.with_values(values)
    torch.testing.assert_close(changed.to_dense(), dense, rtol=0, atol=0)
    torch.testing.assert_close(changed.t_mm(g), dense.t() @ g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rows.to_dense(), x, rtol=0, atol=0)  # the original is kept


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="2-D"):
        SparseRows(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="must not require a gradient"):
        SparseRows(torch.zeros(2, 3, requires_grad=True))
    rows = SparseRows(torch.eye(3))
    with pytest.raises(ValueError, match="3 entries"):
        rows.with_values(torch.ones(4))


def test_worth_it_only_for_sparse_fixed_matrices():
    assert SparseRows.worth_it(bag_of_words(40, 60))
    assert not SparseRows.worth_it(torch.randn(40, 60))
    assert not SparseRows.worth_it(bag_of_words(40, 60).requires_grad_(True))
    assert not SparseRows.worth_it(bag_of_words(40, 60)[None])


def test_sparse_linear_gradients_equal_dense_autograd():
    x = bag_of_words(30, 20, share=0.2, dtype=torch.float64)
    w = torch.randn(4, 20, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(30, 4, dtype=torch.float64)
    (operand_linear(SparseRows(x), w, b) * upstream).sum().backward()
    grads = w.grad.clone(), b.grad.clone()
    w.grad = b.grad = None
    (torch.nn.functional.linear(x, w, b) * upstream).sum().backward()
    torch.testing.assert_close(grads[0], w.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], b.grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w, b: operand_linear(SparseRows(x), w, b),
                                    (w.detach().requires_grad_(), b.detach().requires_grad_()))


def test_both_products_of_the_operand_protocol_and_their_gradients():
    x = bag_of_words(30, 20, share=0.2, dtype=torch.float64)
    rows = SparseRows(x)
    h = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 30, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(rows @ h, x @ h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g @ rows, g @ x, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda h: rows @ h, (h,))
    assert torch.autograd.gradcheck(lambda g: g @ rows, (g,))


def test_sparse_matmul_and_centroid_equal_the_coo_adjacency():
    adj = GRAPH.adj_norm.double().coalesce()  # (48, 48) row-normalised, COO
    rows = SparseRows(adj)
    assert rows.values.numel() == adj._nnz()
    h = expmap0(torch.randn(48, DIM, dtype=torch.float64) * 0.3)
    h[:, 0] = 0
    h = expmap0(h).requires_grad_(True)
    upstream = torch.randn(48, DIM, dtype=torch.float64)
    ours = centroid(h, rows)
    (ours * upstream).sum().backward()
    grad = h.grad.clone()
    h.grad = None
    theirs = centroid(h, adj)
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, h.grad, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: rows @ v,
                                    (torch.randn(48, 3, dtype=torch.float64,
                                                 requires_grad=True),))


def test_unknown_modules_get_the_dense_matrix():
    x = bag_of_words(10, 6, share=0.3)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, inp):
            seen.append(inp)
            return inp.sum(1)

    torch.testing.assert_close(apply_linear(Probe(), SparseRows(x)), x.sum(1))
    assert isinstance(seen[0], torch.Tensor) and torch.equal(seen[0], x)


# --------------------------------------------------------------------------- every method
def converted_layer(name: str, mode: str | None = None,
                    dtype: torch.dtype = torch.float32) -> LorentzLinear:
    """A LorentzLinear (60 + 1 -> DIM) whose inner linear the method replaced."""
    torch.manual_seed(0)
    holder = torch.nn.Sequential(LorentzLinear(61, DIM))
    method = make_method(name, target_modules=HYBONET_TARGETS, **options(name))
    holder = method.prepare(holder).to(dtype)
    layer = holder[0]
    with torch.no_grad():  # a trained-looking state: LoRA's B non-zero
        for pname, p in layer.named_parameters():
            if pname.endswith("lora_B"):
                p.normal_(0, 0.1)
    if mode is not None:
        layer.linear.forward_mode = mode
    return layer


def layer_outputs_and_grads(layer: LorentzLinear, x) -> tuple[torch.Tensor, dict]:
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    upstream = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * upstream).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()
                        if p.grad is not None}


# The sparse and dense paths sum the same products in different orders (CSR skips the
# zeros). A weight-gradient entry is a sum over the T rows whose terms can be far larger than
# the entry (measured: 0.14 out of terms near 10), so the float32 paths differ by about
# eps32 * sum|terms|, not by a fraction of the entry, and by how much depends on the CPU's
# kernels. Hence entry-wise checks run in float64, where that is ~1e-14 of the terms while a
# real bug (a dropped or extra factor, a wrong transpose) moves entries by far more than
# 1e-9; float32 is compared tensor-wise: a reordered sum of T terms changes by at most
# (T - 1) eps32 sum|terms|, with the largest entry standing for the size of the terms and a
# factor 4 for both paths' rounding of the upstream gradient (measured: up to 34 eps32 max|g|
# at T = 40 against the bound's 160).
def assert_same_outputs_and_gradients(layer: LorentzLinear, x: torch.Tensor, what: str):
    y_dense, g_dense = layer_outputs_and_grads(layer, x)
    y_sparse, g_sparse = layer_outputs_and_grads(layer, SparseRows(x))
    assert g_sparse.keys() == g_dense.keys() and g_dense
    if x.dtype == torch.float64:
        torch.testing.assert_close(y_sparse, y_dense, rtol=1e-9, atol=1e-10)
        for key in g_dense:
            torch.testing.assert_close(g_sparse[key], g_dense[key], rtol=1e-9, atol=1e-10,
                                       msg=f"{what} {key}")
        return
    torch.testing.assert_close(y_sparse, y_dense, rtol=1e-5, atol=1e-6)
    bound = 4 * x.shape[0] * torch.finfo(x.dtype).eps
    for key in g_dense:
        scale = g_dense[key].abs().max().item()
        worst = (g_sparse[key] - g_dense[key]).abs().max().item()
        assert worst <= bound * scale, f"{what} {key}: {worst:.3g} > {bound * scale:.3g}"


@methods
def test_every_methods_layer_gives_the_dense_outputs_and_gradients(name):
    modes = ("factored", "composed") if name.startswith("sst") else (None,)
    for dtype in (torch.float64, torch.float32):
        x = lifted(dtype=dtype)
        for mode in modes:
            layer = converted_layer(name, mode, dtype)
            assert_same_outputs_and_gradients(layer, x, f"{name} {mode} {dtype}")


def test_spectral_layer_runs_sparse_in_both_modes_without_densifying(monkeypatch):
    layer = converted_layer("sst")
    assert isinstance(layer.linear, SpectralLinear)
    monkeypatch.setattr(SparseRows, "to_dense", lambda self: pytest.fail("densified"))
    for mode in ("factored", "composed"):
        layer.linear.forward_mode = mode
        layer(SparseRows(lifted())).sum().backward()


# --------------------------------------------------------------------------- dropout
def test_dropout_draws_the_dense_paths_mask_and_stays_sparse():
    x = lifted()
    dropout = SparseInputDropout(0.6)
    torch.manual_seed(3)
    dense = dropout(x)
    torch.manual_seed(3)
    sparse = dropout(SparseRows(x))
    assert isinstance(sparse, SparseRows)
    torch.testing.assert_close(sparse.to_dense(), dense, rtol=0, atol=0)
    dropout.eval()
    rows = SparseRows(x)
    assert dropout(rows) is rows


# --------------------------------------------------------------------------- the model
def sparse_graph(dtype=torch.float32) -> Graph:
    """GRAPH with bag-of-words features (about 5% non-zero) in place of its dense ones."""
    features = bag_of_words(GRAPH.features.shape[0], 80, dtype=dtype)
    rest = {f: getattr(GRAPH, f) for f in Graph.__dataclass_fields__ if f != "features"}
    rest["adj_norm"] = rest["adj_norm"].to(dtype)
    return Graph(features, **rest)


def test_encoder_keeps_a_csr_copy_of_a_coo_adjacency():
    torch.manual_seed(0)
    encoder = HyboNetGraphModel("nc", GRAPH.features.shape[1], 3, dim=DIM).encoder
    rows = encoder.csr_adjacency(GRAPH.adj_norm)
    assert isinstance(rows, SparseRows) and encoder.csr_adjacency(GRAPH.adj_norm) is rows
    torch.testing.assert_close(rows.to_dense(), GRAPH.adj_norm.to_dense(), rtol=0, atol=0)
    dense = GRAPH.adj_norm.to_dense()
    assert encoder.csr_adjacency(dense) is dense
    encoder.sparse_products = False
    assert encoder.csr_adjacency(GRAPH.adj_norm) is GRAPH.adj_norm
    graph = sparse_graph()
    assert isinstance(encoder.first_input(graph.features), torch.Tensor)


def test_encoder_chooses_sparse_rows_for_sparse_fixed_features_only():
    graph = sparse_graph()
    torch.manual_seed(0)
    model = HyboNetGraphModel("nc", 80, 3, dim=DIM, num_layers=3)
    first = model.encoder.first_input(graph.features)
    assert isinstance(first, SparseRows)
    assert model.encoder.first_input(graph.features) is first  # kept for the same tensor
    torch.testing.assert_close(first.to_dense(), model.encoder.lift(graph.features))
    dense_model = HyboNetGraphModel("nc", GRAPH.features.shape[1], 3, dim=DIM, num_layers=3)
    assert isinstance(dense_model.encoder.first_input(GRAPH.features), torch.Tensor)
    grad_features = graph.features.clone().requires_grad_(True)
    assert isinstance(model.encoder.first_input(grad_features), torch.Tensor)


def train_losses(name: str, task: str, graph: Graph, steps: int,
                 sparse_products: bool = True) -> list[float]:
    torch.manual_seed(0)
    model = HyboNetGraphModel(task, graph.features.shape[1], 3 if task == "nc" else None,
                              dim=DIM, num_layers=3, dropout=0.5,
                              sparse_products=sparse_products).to(graph.features.dtype)
    method = make_method(name, target_modules=HYBONET_TARGETS, **options(name))
    model = method.prepare(model)
    opts = build_hyperbolic_optimizer(model, method, lr=0.02)
    rng = np.random.RandomState(0)
    torch.manual_seed(1)
    return [train_graph_step(model, graph, opts, method, step, 1.0, rng)
            for step in range(1, steps + 1)]


@methods
@pytest.mark.parametrize("task", ["nc", "lp"])
def test_training_with_sparse_products_follows_the_dense_run(name, task):
    # float64: the two paths differ only in summation order, so they agree to ~1e-12 over
    # many steps. (In float32 training amplifies that rounding: 1e-2 in the loss after 45
    # Airport NC epochs, and GaLore's gradient SVD turns 1e-7 into 1e-3 within 2 steps.)
    graph = sparse_graph(torch.float64)
    sparse = train_losses(name, task, graph, steps=12)
    dense = train_losses(name, task, graph, steps=12, sparse_products=False)
    assert all(math.isfinite(v) for v in sparse) and len(set(sparse)) > 1
    torch.testing.assert_close(torch.tensor(sparse), torch.tensor(dense), rtol=1e-9, atol=1e-10)


def test_float32_training_with_sparse_products_stays_close():
    graph = sparse_graph()
    sparse = train_losses("sst", "lp", graph, steps=4)
    dense = train_losses("sst", "lp", graph, steps=4, sparse_products=False)
    torch.testing.assert_close(torch.tensor(sparse), torch.tensor(dense), rtol=1e-5, atol=1e-6)
