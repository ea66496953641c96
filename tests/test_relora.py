"""LoRA and ReLoRA* specifics: initialisation, merge-and-reinit, optimizer resets, schedules."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyMLP, tiny_gpt2, token_batch
from torch import nn

from sparse_spectral import make_method
from sparse_spectral.methods import LoRALinear
from sparse_spectral.training.schedules import (
    jagged_cosine_lambda,
    method_lr_lambda,
    warmup_cosine_lambda,
)


def _x(seed):
    return torch.randn(8, 12, generator=torch.Generator().manual_seed(seed))


def _relora(**kw):
    settings = dict(rank=2, merge_interval=3, exclude_modules=["head"], seed=1)
    method = make_method("relora", **(settings | kw))
    torch.manual_seed(0)
    model = method.prepare(TinyMLP())
    return model, method, method.build_optimizer(model, lr=1e-2)


def _step(model, method, opt, step):
    model(_x(step)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(step, opt)


def test_lora_initialisation_and_scaling():
    torch.manual_seed(0)
    base = nn.Linear(300, 200)
    layer = LoRALinear(base, rank=4, alpha=8.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(layer.lora_B, torch.zeros(200, 4))
    assert layer.lora_A.std().item() == pytest.approx(1 / 4, rel=0.05)  # documented std 1/r
    assert not base.weight.requires_grad and not base.bias.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 300)
    expected = base(x) + 2.0 * x @ (layer.lora_B @ layer.lora_A).t()  # alpha / r = 2
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-4)


def test_lora_on_gpt2_conv1d_merges_back_to_conv1d():
    from transformers.pytorch_utils import Conv1D

    method = make_method("lora", rank=2)
    model = method.prepare(tiny_gpt2()).eval()
    for layer in (m for m in model.modules() if isinstance(m, LoRALinear)):
        with torch.no_grad():
            layer.lora_B.normal_(std=0.1)
    ids = token_batch()
    merged = method.merge(model)
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_merge_keeps_the_function_at_the_merge_step():
    model, method, opt = _relora()
    for step in (1, 2):
        _step(model, method, opt, step)
    layer = model.proj
    weight_before = layer.base.weight.detach().clone()
    A_before = layer.lora_A.detach().clone()
    assert layer.lora_B.abs().sum() > 0
    model(_x(3)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    out_before = model(_x(0))
    delta = layer.delta_weight()
    method.after_step(3, opt)  # merge step
    torch.testing.assert_close(model(_x(0)), out_before, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer.base.weight, weight_before + delta, rtol=0, atol=1e-6)
    assert torch.equal(layer.lora_B, torch.zeros_like(layer.lora_B))
    assert not torch.allclose(layer.lora_A, A_before)


def test_full_reset_zeroes_all_state_of_A_and_B_in_place():
    model, method, opt = _relora()
    for step in (1, 2):
        _step(model, method, opt, step)
    layer = model.proj
    tensors = {k: v for k, v in opt.state[layer.lora_A].items()}
    head_state = opt.state[model.head.weight]["exp_avg"].clone()
    _step(model, method, opt, 3)
    state = opt.state[layer.lora_A]
    assert state.keys() == tensors.keys()
    assert all(state[k] is tensors[k] for k in tensors)  # reset in place, keys stable
    assert all(t.abs().sum() == 0 for t in state.values())
    assert all(t.abs().sum() == 0 for t in opt.state[layer.lora_B].values())
    assert not torch.equal(opt.state[model.head.weight]["exp_avg"], head_state)  # untouched


def test_gradients_right_after_merge_and_the_saddle_point():
    """With B = 0 and A random, B learns at once and A from the next step; both zero is a saddle."""
    model, method, opt = _relora()
    for step in (1, 2, 3):
        _step(model, method, opt, step)
    layer = model.proj
    model(_x(4)).pow(2).mean().backward()
    assert layer.lora_B.grad.abs().sum() > 0
    # dL/dA = (alpha / r) B^T G vanishes exactly while B = 0 ...
    assert torch.equal(layer.lora_A.grad, torch.zeros_like(layer.lora_A))
    opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(4, opt)
    model(_x(5)).pow(2).mean().backward()
    assert layer.lora_A.grad.abs().sum() > 0  # ... and not after one step of B
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # both factors zero: no gradient can leave this point
        layer.lora_A.zero_()
        layer.lora_B.zero_()
    model(_x(6)).pow(2).mean().backward()
    assert layer.lora_A.grad.abs().sum() == 0 and layer.lora_B.grad.abs().sum() == 0


@pytest.mark.parametrize("mode", ["magnitude", "random"])
def test_partial_reset_prunes_the_given_share(mode):
    model, method, opt = _relora(optimizer_reset=mode, reset_ratio=0.5, rank=4)
    for step in (1, 2):
        _step(model, method, opt, step)
    layer = model.blocks[1]["fc"]
    before = opt.state[layer.lora_B]["exp_avg_sq"].clone()
    step_before = opt.state[layer.lora_B]["step"].clone()
    model(_x(3)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    moments = opt.state[layer.lora_B]["exp_avg_sq"].clone()
    method.after_step(3, opt)
    after = opt.state[layer.lora_B]["exp_avg_sq"]
    zeroed = (after == 0) & (moments != 0)
    share = zeroed.float().mean().item()
    assert 0.3 < share < 0.7
    if mode == "magnitude":  # every kept entry is at least as large as every pruned one
        assert moments[zeroed].max() <= moments[~zeroed].min()
    assert opt.state[layer.lora_B]["step"] == step_before + 1  # counters kept, as ReLoRA does
    assert before.shape == after.shape


def test_relora_settings_are_validated():
    for kwargs, message in [({"merge_interval": 0}, "merge_interval=0"),
                            ({"optimizer_reset": "half"}, "optimizer_reset='half'"),
                            ({"reset_ratio": 1.5}, "reset_ratio=1.5"),
                            ({"restart_warmup_steps": -1}, "restart_warmup_steps=-1"),
                            ({"alpha": 0}, "alpha=0")]:
        with pytest.raises(ValueError, match=message):
            make_method("relora", **kwargs)


def test_warmup_cosine_schedule():
    f = warmup_cosine_lambda(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert f(0) == 0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.55)
    assert f(100) == pytest.approx(0.1) and f(150) == pytest.approx(0.1)
    values = [f(t) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="warmup_steps=200"):
        warmup_cosine_lambda(100, 200)


def test_jagged_cosine_rewarms_after_each_merge():
    _, method, _ = _relora(merge_interval=20, restart_warmup_steps=5)
    f = method_lr_lambda(method, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    envelope = warmup_cosine_lambda(100, 10, 0.1)
    assert f(20) == 0 and f(40) == 0  # right after each merge
    assert f(22) == pytest.approx(envelope(22) * 2 / 5)
    assert f(25) == pytest.approx(envelope(25)) and f(19) == pytest.approx(envelope(19))
    assert [f(t) for t in range(10)] == [envelope(t) for t in range(10)]
    plain = method_lr_lambda(make_method("relora", merge_interval=20), 100, 10, 0.1)
    assert plain(20) == pytest.approx(envelope(20))
    assert jagged_cosine_lambda(100, 10, 0.1, 20, 0)(20) == pytest.approx(envelope(20))
