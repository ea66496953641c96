"""The guard (methods/guard.py): training a converted model outside its method's life cycle
fails loudly within a few steps; correct use never trips it."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch
from conftest import TinyMLP
from torch import nn

from sparse_spectral.methods import guard, make_method
from sparse_spectral.methods.guard import ALLOWED_MISSED_STEPS, MethodGuardError


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g), torch.randint(0, 5, (32,), generator=g)


def _setup(name: str = "sst", **settings):
    torch.manual_seed(0)
    defaults = {"full": {}, "lora": {"rank": 2}, "galore": {"rank": 2, "update_proj_gap": 2},
                "apollo": {"rank": 2, "update_proj_gap": 2}}
    method = make_method(name, **settings or defaults.get(name, {"rank": 2}))
    model = method.prepare(TinyMLP(d_in=12, width=16))
    return method, model


def _step(model, optimizer, x, y):
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["sst", "relora", "sst-uniform"])
def test_a_loop_that_forgets_after_step_raises_within_three_steps(name):
    method, model = _setup(name, rank=2)
    optimizer = method.build_optimizer(model, lr=1e-2)
    x, y = _data()
    done = []
    with pytest.raises(MethodGuardError) as caught:
        for step in range(1, 4):
            _step(model, optimizer, x, y)
            done.append(step)
    assert len(done) == ALLOWED_MISSED_STEPS == 2  # the third step raised
    message = str(caught.value)
    assert "method.after_step(step, optimizer)" in message
    assert "sparse_spectral.training.hf" in message


@pytest.mark.parametrize("name", ["full", "lora", "relora", "galore", "apollo", "sst",
                                  "sst-top-r"])
def test_the_life_cycle_never_trips_the_guard(name):
    method, model = _setup(name)
    assert guard.is_watched(method) == (name in ("relora", "galore", "apollo", "sst",
                                                 "sst-top-r"))
    optimizer = method.build_optimizer(model, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    x, y = _data()
    for step in range(1, 13):
        _step(model, optimizer, x, y)
        scheduler.step()
        method.after_step(step, optimizer)


def test_an_optimizer_without_per_slot_step_counters_raises_on_sst():
    method, model = _setup("sst", rank=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = _data()
    with pytest.raises(MethodGuardError, match="one step counter per tensor") as caught:
        _step(model, optimizer, x, y)
    assert "method.build_optimizer" in str(caught.value)
    # SGD keeps no step counter: momentum buffers restart per slot, so it is allowed.
    method, model = _setup("sst", rank=2)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    for step in range(1, 4):
        _step(model, sgd, x, y)
        method.after_step(step, sgd)


def test_galore_targets_trained_without_projection_raise():
    method, model = _setup("galore")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(MethodGuardError, match="GaLore's target weights"):
        _step(model, optimizer, *_data())


def test_optimizers_that_do_not_hold_the_method_parameters_are_ignored():
    method, model = _setup("sst", rank=2)
    other = nn.Linear(3, 3)
    optimizer = torch.optim.AdamW(other.parameters(), lr=1e-2)
    for _ in range(5):
        other(torch.randn(2, 3)).sum().backward()
        optimizer.step()


def test_the_combined_optimizer_and_its_members_are_counted_separately():
    from sparse_spectral.hyperbolic.optim import CombinedOptimizer

    method, model = _setup("sst", rank=2)
    inner = method.build_optimizer(model, lr=1e-2)
    combined = CombinedOptimizer(inner)
    x, y = _data()
    for step in range(1, 6):  # each step fires the member's hook and the combined one's
        _step(model, combined, x, y)
        method.after_step(step, combined)
    with pytest.raises(MethodGuardError):
        for _ in range(3):
            _step(model, combined, x, y)


def test_resume_with_a_fresh_optimizer_and_restored_method_passes():
    method, model = _setup("sst", rank=2, iteration_interval=2)
    optimizer = method.build_optimizer(model, lr=1e-2)
    x, y = _data()
    for step in range(1, 4):
        _step(model, optimizer, x, y)
        method.after_step(step, optimizer)
    fresh_method = make_method("sst", rank=2, iteration_interval=2)
    fresh_model = fresh_method.prepare(TinyMLP(d_in=12, width=16))
    fresh_model.load_state_dict(model.state_dict())
    fresh_method.load_state_dict(method.state_dict())
    fresh_opt = fresh_method.build_optimizer(fresh_model, lr=1e-2)
    fresh_opt.load_state_dict(optimizer.state_dict())
    for step in range(4, 9):
        _step(fresh_model, fresh_opt, x, y)
        fresh_method.after_step(step, fresh_opt)


def test_unwatch_silences_the_guard_and_dropped_methods_are_forgotten():
    method, model = _setup("sst", rank=2)
    guard.unwatch(method)
    optimizer = method.build_optimizer(model, lr=1e-2)
    x, y = _data()
    for _ in range(5):
        _step(model, optimizer, x, y)
    method2, _ = _setup("relora", rank=2)
    assert guard.is_watched(method2)
    alive = weakref.ref(method2)
    del method2
    gc.collect()
    assert alive() is None  # the guard keeps no strong reference to a method


def test_the_hook_costs_microseconds_per_step():
    method, model = _setup("sst", rank=2)
    optimizer = method.build_optimizer(model, lr=1e-2)
    _step(model, optimizer, *_data())
    method.after_step(1, optimizer)
    calls = 2000
    began = time.perf_counter()
    for _ in range(calls):
        guard._after_optimizer_step(optimizer, (), {})
        method.step += 1
    per_call = (time.perf_counter() - began) / calls
    assert per_call < 50e-6, per_call


def test_the_guard_follows_replaced_parameters_and_forgets_dropped_weights():
    """FSDP2's fully_shard replaces a layer's parameter objects: the guard must watch the
    new ones (and never the ids of the dropped ones, which other tensors can get)."""
    method, model = _setup("sst", rank=2)
    _, layer = method.layers[0]
    for name in ("s", "U_active", "Vh_active"):  # as fully_shard does: new objects
        setattr(layer, name, nn.Parameter(getattr(layer, name).detach().clone()))
    optimizer = method.build_optimizer(model, lr=1e-2)
    x, y = _data()
    with pytest.raises(MethodGuardError, match="without method.after_step"):
        for _ in range(3):
            _step(model, optimizer, x, y)
    galore, model = _setup("galore")
    assert galore.target_ids and galore.target_ids <= {id(p) for p in model.parameters()}
    del model
    gc.collect()
    assert galore.target_ids == set()  # the dropped model's weights are not targets any more
