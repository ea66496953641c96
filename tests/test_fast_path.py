"""The composed fast path against the factored path and a dense autograd reference.

Both evaluations must give the same outputs and the same (enhanced or true) gradients; the
cost model picks between them; neither ever makes a full-size gradient or optimizer tensor
for the frozen factors; staggered re-SVD spreads the layers over a round.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TinyMLP
from torch import nn

from sparse_spectral.methods import make_method
from sparse_spectral.spectral import SlotAdamW, SpectralLinear
from sparse_spectral.spectral.cost import choose_mode, composed_cost, factored_cost
from sparse_spectral.spectral.function import compose_weight, spectral_linear


def _factors(m, n, r, dtype, seed=0, zero_s=None):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=dtype))[0]
    Vh = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=dtype))[0].t().contiguous()
    s = torch.rand(k, generator=g, dtype=dtype) + 0.5
    if zero_s is not None:
        s[zero_s] = 0.0
    order = torch.randperm(k, generator=g)
    idx, frozen_idx = order[:r], order[r:]
    U, Vh = U[:, frozen_idx].contiguous(), Vh[frozen_idx].contiguous()
    # Live active vectors differ from their stale frozen copies, as after some updates;
    # unit norm, as normalize_() keeps them.
    U_active = nn.functional.normalize(torch.randn(m, r, generator=g, dtype=dtype), dim=0)
    Vh_active = nn.functional.normalize(torch.randn(r, n, generator=g, dtype=dtype), dim=1)
    bias = torch.randn(m, generator=g, dtype=dtype)
    x = torch.randn(3, 17, n, generator=g, dtype=dtype)
    return x, U, Vh, s, U_active, Vh_active, idx, frozen_idx, bias


def _effective(U, Vh, U_active, Vh_active, idx, frozen_idx):
    k = idx.numel() + frozen_idx.numel()
    U_eff = U_active.new_zeros(U_active.shape[0], k).index_copy(1, frozen_idx, U)
    Vh_eff = Vh_active.new_zeros(k, Vh_active.shape[1]).index_copy(0, frozen_idx, Vh)
    return U_eff.index_copy(1, idx, U_active), Vh_eff.index_copy(0, idx, Vh_active)


def _run(mode, args, grad_out, enhanced, all_s, with_bias=True):
    x, U, Vh, s, U_active, Vh_active, idx, frozen_idx, bias = args
    leaves = [t.clone().requires_grad_(True) for t in (x, s, U_active, Vh_active, bias)]
    xl, sl, ual, vhl, bl = leaves
    y = spectral_linear(xl, U, Vh, sl, ual, vhl, idx, frozen_idx, bl if with_bias else None,
                        enhanced=enhanced, all_singular_values=all_s, mode=mode)
    y.backward(grad_out)
    grads = [t.grad for t in leaves[:4]] + ([bl.grad] if with_bias else [])
    return y.detach(), grads


SHAPES = [(24, 16, 4), (16, 24, 4), (20, 20, 20)]


@pytest.mark.parametrize("m,n,r", SHAPES)
@pytest.mark.parametrize("enhanced", [True, False])
@pytest.mark.parametrize("all_s", [True, False])
def test_composed_equals_factored_float32(m, n, r, enhanced, all_s):
    args = _factors(m, n, r, torch.float32)
    # The gradient of a mean loss over the 51 tokens.
    grad_out = torch.randn(3, 17, m, generator=torch.Generator().manual_seed(1)) / 51
    y_f, g_f = _run("factored", args, grad_out, enhanced, all_s)
    y_c, g_c = _run("composed", args, grad_out, enhanced, all_s)
    torch.testing.assert_close(y_c, y_f, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("x", "s", "U_active", "Vh_active", "bias"), g_c, g_f):
        diff = (got - want).abs().max().item()
        assert diff <= 1e-5 + 1e-5 * want.abs().max().item(), f"gradient of {name}: {diff:.2e}"


@pytest.mark.parametrize("zero_s", [None, [0, 2]])
def test_composed_true_gradients_match_dense_autograd_float64(zero_s):
    x, U, Vh, s, U_active, Vh_active, idx, frozen_idx, bias = args = _factors(
        9, 6, 3, torch.float64, zero_s=zero_s)
    grad_out = torch.randn(3, 17, 9, dtype=torch.float64)
    y, got = _run("composed", args, grad_out, enhanced=False, all_s=True)

    leaves = [t.clone().requires_grad_(True) for t in (x, s, U_active, Vh_active, bias)]
    xl, sl, ual, vhl, bl = leaves
    U_eff, Vh_eff = _effective(U, Vh, ual, vhl, idx, frozen_idx)
    ref = xl @ ((U_eff * sl) @ Vh_eff).t() + bl
    ref.backward(grad_out)
    torch.testing.assert_close(y, ref.detach(), rtol=0, atol=1e-12)
    for g, leaf in zip(got, leaves):
        torch.testing.assert_close(g, leaf.grad, rtol=0, atol=1e-10)


def test_composed_enhanced_gradient_is_G_v_and_Gt_u():
    x, _, _, _, U_active, Vh_active, _, _, _ = args = _factors(8, 5, 2, torch.float64)
    grad_out = torch.randn(3, 17, 8, dtype=torch.float64)
    _, (_, _, gU, gVh, _) = _run("composed", args, grad_out, enhanced=True, all_s=True)
    G = grad_out.reshape(-1, 8).t() @ x.reshape(-1, 5)
    torch.testing.assert_close(gU, G @ Vh_active.t(), rtol=0, atol=1e-11)
    torch.testing.assert_close(gVh, U_active.t() @ G, rtol=0, atol=1e-11)


def test_composed_without_bias_and_gradcheck():
    x, U, Vh, s, U_active, Vh_active, idx, frozen_idx, _ = _factors(5, 4, 2, torch.float64)
    inputs = (x[:1, :3].clone().requires_grad_(), U, Vh, s.clone().requires_grad_(),
              U_active.clone().requires_grad_(), Vh_active.clone().requires_grad_(), idx,
              frozen_idx, None, False, True, "composed")
    assert torch.autograd.gradcheck(spectral_linear, inputs)


def test_compose_weight_equals_effective_factors():
    for m, n in ((7, 11), (11, 7)):
        _, U, Vh, s, U_active, Vh_active, idx, frozen_idx, _ = _factors(m, n, 3, torch.float64)
        U_eff, Vh_eff = _effective(U, Vh, U_active, Vh_active, idx, frozen_idx)
        torch.testing.assert_close(
            compose_weight(U, Vh, s, U_active, Vh_active, idx, frozen_idx), (U_eff * s) @ Vh_eff,
            rtol=0, atol=1e-12)


def test_unknown_mode_is_refused():
    args = _factors(4, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="mode='dense'.*factored, composed"):
        spectral_linear(*args, mode="dense")


# ---------------------------------------------------------------------- cost model
def test_cost_model_prefers_composed_for_many_tokens():
    d, r = 512, 64
    assert choose_mode(4096, d, d, d, r) == "composed"
    assert choose_mode(32, d, d, d, r) == "factored"
    # The switch sits where the multiply-add counts cross.
    crossing = next(t for t in range(1, 10 * d)
                    if composed_cost(t, d, d, d, r) < factored_cost(t, d, d, d, r))
    assert choose_mode(crossing, d, d, d, r) == "composed"
    assert choose_mode(crossing - 1, d, d, d, r) == "factored"
    assert 1.3 * d < crossing < 1.45 * d  # T > 1.36 k for r = k / 8 (module docstring)


@pytest.mark.parametrize("setting", ["factored", "composed"])
def test_setting_overrides_the_cost_model(setting):
    assert choose_mode(1, 64, 64, 64, 8, setting) == setting
    assert choose_mode(10**6, 64, 64, 64, 8, setting) == setting


def test_bad_forward_mode_names_the_allowed_values():
    with pytest.raises(ValueError, match="forward_mode='fast'.*auto, factored, composed"):
        SpectralLinear.from_linear(nn.Linear(8, 8), 2, forward_mode="fast")
    with pytest.raises(ValueError, match="forward_mode='fast'"):
        make_method("sst", rank=2, forward_mode="fast")


def test_layer_auto_mode_follows_the_token_count():
    layer = SpectralLinear.from_linear(nn.Linear(64, 64), 8)
    assert layer.mode_for(torch.zeros(4, 64)) == "factored"
    assert layer.mode_for(torch.zeros(8, 128, 64)) == "composed"


# ---------------------------------------------------------------------- whole models
def _train(forward_mode, steps=4, seed=0):
    torch.manual_seed(seed)
    model = TinyMLP(d_in=12, width=16)
    method = make_method("sst", rank=4, iteration_interval=2, forward_mode=forward_mode)
    model = method.prepare(model)
    optimizer = method.build_optimizer(model, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 12, generator=g), torch.randint(0, 5, (64,), generator=g)
    losses = []
    for step in range(1, steps + 1):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        method.after_step(step, optimizer)
        losses.append(loss.item())
    return model, optimizer, losses


def test_training_trajectories_agree_between_modes():
    m_f, _, loss_f = _train("factored")
    m_c, _, loss_c = _train("composed")
    assert loss_c == pytest.approx(loss_f, abs=1e-5)
    for (name, p_f), (_, p_c) in zip(m_f.named_parameters(), m_c.named_parameters()):
        torch.testing.assert_close(p_c, p_f, rtol=0, atol=1e-5, msg=name)


@pytest.mark.parametrize("forward_mode", ["factored", "composed"])
def test_no_full_size_gradient_or_optimizer_state_for_frozen_factors(forward_mode):
    model, optimizer, _ = _train(forward_mode, steps=3)
    assert isinstance(optimizer, SlotAdamW)
    layers = [m for m in model.modules() if isinstance(m, SpectralLinear)]
    assert layers
    owned = {id(p) for p in optimizer.state}
    for layer in layers:
        for frozen in (layer.U_frozen, layer.Vh_frozen):
            assert frozen.grad is None and not frozen.requires_grad
            assert id(frozen) not in owned
        for p in (layer.s, layer.U_active, layer.Vh_active):
            assert p.grad is not None and p.grad.shape == p.shape
            for key, value in optimizer.state[p].items():
                # moments shaped like the small tensor itself; a step counter per slot
                assert value.shape == p.shape or value.numel() <= max(p.shape), \
                    (key, tuple(value.shape), tuple(p.shape))


# ---------------------------------------------------------------------- staggered re-SVD
class _Stack(nn.Module):
    def __init__(self, layers=6, width=16):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        return self.head(self.layers(x))


def _resvd_log(stagger, steps=24):
    torch.manual_seed(0)
    # k = 16, r = 4: T2 = 4 iterations of T3 = 2 steps, 8 steps per round.
    method = make_method("sst", rank=4, iteration_interval=2, stagger_resvd=stagger,
                         target_modules=r"layers\.\d+")
    method.prepare(_Stack())
    log = []
    for index, (_, layer) in enumerate(method.layers):
        original = layer.resvd_

        def recording(*args, _index=index, _original=original, **kwargs):
            log.append((method.step, _index))
            return _original(*args, **kwargs)

        layer.resvd_ = recording
    for step in range(1, steps + 1):
        method.after_step(step)
    return log, len(method.layers)


def test_staggered_resvd_spreads_layers_over_the_round():
    log, n_layers = _resvd_log(stagger=True)
    steps_taken = [s for s, _ in log]
    # 6 layers over an 8-step round: never two SVDs on one step.
    assert len(steps_taken) == len(set(steps_taken))
    for layer in range(n_layers):
        steps = [s for s, i in log if i == layer]
        assert len(steps) == 3 and all(b - a == 8 for a, b in zip(steps, steps[1:]))


def test_staggered_layers_still_reselect_every_T3_steps():
    torch.manual_seed(0)
    method = make_method("sst", rank=4, iteration_interval=3, target_modules=r"layers\.\d+")
    method.prepare(_Stack())
    changes = {index: [] for index in range(len(method.layers))}
    for step in range(1, 25):
        before = [layer.idx.clone() for _, layer in method.layers]
        method.after_step(step)
        for index, (_, layer) in enumerate(method.layers):
            clock = method._clock(layer, index, step)
            if clock % 3 == 0:
                changes[index].append(step)
            else:  # between its iteration boundaries a layer keeps its selection
                assert torch.equal(layer.idx, before[index])
    for steps in changes.values():
        assert all(b - a == 3 for a, b in zip(steps, steps[1:])) and len(steps) == 8


def test_unstaggered_resvd_decomposes_every_layer_together():
    log, n_layers = _resvd_log(stagger=False)
    assert sorted({s for s, _ in log}) == [8, 16, 24]
    assert len(log) == 3 * n_layers


def test_restart_warmup_needs_unstaggered_selections():
    with pytest.raises(ValueError, match="restart_warmup_steps=4.*stagger_resvd=False"):
        make_method("sst", restart_warmup_steps=4)
    make_method("sst", restart_warmup_steps=4, stagger_resvd=False)
