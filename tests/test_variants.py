"""The SST ablation variants of the paper, selectable by name or setting."""

from __future__ import annotations

import pytest
import torch
from conftest import TinyMLP

from sparse_spectral import make_method, method_from_state
from sparse_spectral.methods import SST_VARIANTS


def _prepared(name, **kw):
    method = make_method(name, **({"rank": 3, "iteration_interval": 2,
                                   "exclude_modules": ["head"]} | kw))
    torch.manual_seed(0)
    model = method.prepare(TinyMLP())
    return model, method, method.build_optimizer(model, lr=1e-2)


def _x(seed):
    return torch.randn(8, 12, generator=torch.Generator().manual_seed(seed))


def _step(model, method, opt, step):
    model(_x(step)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(step, opt)


@pytest.mark.parametrize("name", sorted(SST_VARIANTS))
def test_variant_is_sst_with_one_setting_changed(name):
    method = make_method(name, rank=3)
    default = make_method("sst", rank=3).config.to_dict()
    changed = {k: v for k, v in method.config.to_dict().items() if default[k] != v}
    assert changed == SST_VARIANTS[name]
    assert method_from_state(method.state_dict()).config == method.config


def test_variant_refuses_a_contradicting_setting():
    with pytest.raises(ValueError, match="variant 'sst-uniform' fixes"):
        make_method("sst-uniform", sampler="weighted")
    assert make_method("sst-uniform", sampler="uniform").config.sampler == "uniform"


def test_sampled_singular_values_only():
    model, method, opt = _prepared("sst-sampled-s")
    layer = model.blocks[1]["fc"]
    s_before, idx = layer.s.detach().clone(), layer.idx.clone()
    _step(model, method, opt, 1)
    moved = (layer.s != s_before).nonzero().flatten()
    assert set(moved.tolist()) <= set(idx.tolist()) and len(moved) > 0
    assert opt.state[layer.s]["step"].shape == (layer.k,)  # per-index restart
    _step(model, method, opt, 2)  # new selection
    left = sorted(set(idx.tolist()) - set(layer.idx.tolist()))
    assert left, "the draw kept every index; pick another seed"
    state = opt.state[layer.s]
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert state[key][left].abs().sum() == 0
    s_left = layer.s[left].detach().clone()
    _step(model, method, opt, 3)
    assert torch.equal(layer.s[left], s_left)  # no momentum drift once out of the set


def test_all_singular_values_train_by_default():
    model, method, opt = _prepared("sst")
    layer = model.blocks[1]["fc"]
    s_before = layer.s.detach().clone()
    _step(model, method, opt, 1)
    assert (layer.s != s_before).sum() > layer.rank


def test_random_init_keeps_the_spectrum_with_random_orthonormal_factors():
    torch.manual_seed(0)
    dense = TinyMLP()
    weight = dense.blocks[1]["fc"].weight.detach().clone()
    model = make_method("sst-random-init", rank=3, exclude_modules=["head"]).prepare(dense)
    layer = model.blocks[1]["fc"]
    U, s, Vh = torch.linalg.svd(weight, full_matrices=False)
    torch.testing.assert_close(layer.s.detach(), s)
    eye = torch.eye(layer.k)
    U_eff, _, Vh_eff = layer.effective_factors()
    torch.testing.assert_close(U_eff.t() @ U_eff, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(Vh_eff @ Vh_eff.t(), eye, atol=1e-5, rtol=0)
    assert (U_eff.t() @ U).abs().max() < 0.99  # not the SVD basis


def test_default_gradient_carries_the_singular_value_factor():
    grads = {}
    for name in ("sst", "sst-default-grad"):
        model, _, _ = _prepared(name)
        model(_x(0)).pow(2).mean().backward()
        layer = model.blocks[1]["fc"]
        grads[name] = (layer.U_active.grad, layer.Vh_active.grad, layer.s[layer.idx].detach())
    (gu, gv, s_idx), (du, dv, _) = grads["sst"], grads["sst-default-grad"]
    torch.testing.assert_close(du, gu * s_idx, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dv, gv * s_idx[:, None], rtol=1e-5, atol=1e-7)


def test_sst_learning_rate_rewarms_after_each_iteration_when_asked():
    from sparse_spectral.training.schedules import method_lr_lambda, warmup_cosine_lambda

    envelope = warmup_cosine_lambda(100, 10, 0.1)
    plain = method_lr_lambda(make_method("sst", iteration_interval=20), 100, 10, 0.1)
    assert [plain(t) for t in range(100)] == [envelope(t) for t in range(100)]
    jagged = method_lr_lambda(make_method("sst", iteration_interval=20, restart_warmup_steps=4,
                                          stagger_resvd=False), 100, 10, 0.1)
    assert jagged(40) == 0 and jagged(42) == pytest.approx(envelope(42) / 2)
    assert jagged(44) == pytest.approx(envelope(44)) and jagged(19) == envelope(19)
    with pytest.raises(ValueError, match="restart_warmup_steps=-1"):
        make_method("sst", restart_warmup_steps=-1)
