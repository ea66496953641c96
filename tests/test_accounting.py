"""Planned training-state bytes (from shapes, meta device) against the allocated tensors."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama, token_batch

from sparse_spectral.accounting import memory_report, planned_state_bytes
from sparse_spectral.methods import make_method

METHODS = ["full", "lora", "sst", "galore", "apollo", "apollo_mini"]
PROJECTED = ("galore", "apollo", "apollo_mini")  # dense weights, rank-r optimizer state


def _settings(name: str) -> dict:
    return {"full": {}, "apollo_mini": {}}.get(name, {"rank": 4})  # Mini's rank is 1


def _step_counter_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for key, v in state.items() if key == "step" and torch.is_tensor(v))


@pytest.mark.parametrize("name", METHODS)
def test_planned_bytes_match_the_real_tensors_after_a_step(name):
    method = make_method(name, **_settings(name))
    model = method.prepare(tiny_llama())
    optimizer = method.build_optimizer(model, lr=1e-3)
    ids = token_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    real = memory_report(model, optimizer)
    planned = planned_state_bytes(model, method=method)
    assert planned.weights == real.weights
    assert planned.gradients == real.gradients
    # The plan leaves out Adam's step counters (one per tensor, or one per SST slot).
    assert planned.optimizer_state == real.optimizer_state - _step_counter_bytes(optimizer)
    dense_plan = planned_state_bytes(model)  # without the method: two copies of everything
    if name in PROJECTED:
        assert planned.optimizer_state < dense_plan.optimizer_state / 2
    else:
        assert planned == dense_plan


@pytest.mark.parametrize("name", METHODS)
def test_meta_device_plan_equals_the_real_model_plan(name):
    real_method = make_method(name, **_settings(name))
    real = real_method.prepare(tiny_llama())
    with torch.device("meta"):
        meta = tiny_llama()
    meta_method = make_method(name, **_settings(name))
    meta = meta_method.prepare(meta)
    assert next(meta.parameters()).is_meta
    assert planned_state_bytes(meta, method=meta_method) == planned_state_bytes(
        real, method=real_method)


def test_sst_weight_bytes_are_k_m_plus_n_plus_k_per_layer():
    model = make_method("sst", rank=4, target_modules=["q_proj"]).prepare(tiny_llama())
    layer = model.model.layers[0].self_attn.q_proj
    m, n, k = layer.out_features, layer.in_features, layer.k
    stored = sum(p.numel() for p in layer.parameters()) - (0 if layer.bias is None else m)
    assert stored == k * (m + n) + k
