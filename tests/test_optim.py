"""Tests for sparse_spectral.spectral.optim (SPEC sections 3, 4 and 9).

``SlotAdamW`` is AdamW whose step counter can be a vector, one entry per slot (column of
``U_active``, row of ``Vh_active``), so that a vector swapped into a slot restarts Adam
including its bias correction. ``reset_slots`` / ``reset_param_state`` restart optimizer
state in place. The tests compare against ``torch.optim.AdamW`` as the reference, show the
bias-correction problem that a plain AdamW has after a per-slot reset, check checkpoint
round trips, and exercise the ``SpectralLinear.swap_`` integration.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from sparse_spectral.spectral import optim as optim_mod
from sparse_spectral.spectral.layer import SpectralLinear
from sparse_spectral.spectral.optim import (
    SlotAdamW,
    find_state,
    reset_param_state,
    reset_slots,
)

LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def torch_adamw(params, lr=LR, weight_decay=0.0):
    return torch.optim.AdamW(params, lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay,
                             foreach=False)


def fresh_first_update(p0: torch.Tensor, grad: torch.Tensor, lr=LR, weight_decay=0.0):
    """The tensor a brand-new torch AdamW produces after one step from ``p0`` with ``grad``."""
    p = p0.detach().clone().requires_grad_(True)
    opt = torch_adamw([p], lr=lr, weight_decay=weight_decay)
    p.grad = grad.detach().clone()
    opt.step()
    return p.detach()


@pytest.fixture
def rearm_warning(monkeypatch):
    """``reset_slots`` warns once per process; re-arm it for this test."""
    monkeypatch.setattr(optim_mod, "_warned_scalar_step", False)


# --------------------------------------------------------------------------
# Plain AdamW equivalence
# --------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_no_slots_matches_torch_adamw_exactly(weight_decay):
    """Without slot_dims, SlotAdamW is bit-for-bit torch.optim.AdamW (single-tensor path)."""
    g = make_gen(0)
    shapes = [(5, 7), (7,), (3, 4, 2), ()]
    ref = [torch.randn(shape, generator=g).requires_grad_(True) for shape in shapes]
    ours = [p.detach().clone().requires_grad_(True) for p in ref]
    opt_ref = torch_adamw(ref, lr=3e-2, weight_decay=weight_decay)
    opt_ours = SlotAdamW(ours, lr=3e-2, betas=BETAS, eps=EPS, weight_decay=weight_decay)
    for _ in range(20):
        for a, b in zip(ref, ours):
            grad = torch.randn(a.shape, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt_ref.step()
        opt_ours.step()
        for a, b in zip(ref, ours):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    for a, b in zip(ref, ours):
        st_ref, st_ours = opt_ref.state[a], opt_ours.state[b]
        assert float(st_ours["step"]) == float(st_ref["step"]) == 20.0
        torch.testing.assert_close(st_ours["exp_avg"], st_ref["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(st_ours["exp_avg_sq"], st_ref["exp_avg_sq"], rtol=0, atol=0)


def test_parameters_without_grad_are_skipped():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = SlotAdamW([a, b], lr=LR)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b, torch.ones(3))
    assert find_state(opt, b) is None
    assert find_state(opt, a) is not None


def test_closure_is_called_and_its_loss_returned():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = SlotAdamW([p], lr=LR)

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(5.0)
    assert torch.all(p.detach().abs() < torch.tensor([1.0, 2.0]))


# --------------------------------------------------------------------------
# Per-slot step counters
# --------------------------------------------------------------------------


@pytest.mark.parametrize("slot_dim,shape,step_shape",
                         [(1, (6, 4), (1, 4)), (0, (4, 9), (4, 1))])
def test_slotted_state_shapes_and_equivalence(slot_dim, shape, step_shape):
    """All slots stepped together: the same trajectory as AdamW (to float32 rounding)."""
    g = make_gen(1)
    p_ref = torch.randn(shape, generator=g).requires_grad_(True)
    p = p_ref.detach().clone().requires_grad_(True)
    opt_ref = torch_adamw([p_ref], weight_decay=0.05)
    opt = SlotAdamW([{"params": [p], "slot_dims": [slot_dim]}], lr=LR, betas=BETAS, eps=EPS,
                    weight_decay=0.05)
    for _ in range(15):
        grad = torch.randn(shape, generator=g)
        p_ref.grad, p.grad = grad.clone(), grad.clone()
        opt_ref.step()
        opt.step()
        torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-6)
    step = opt.state[p]["step"]
    assert step.shape == step_shape
    assert step.dtype == torch.float32
    assert torch.equal(step, torch.full(step_shape, 15.0))
    assert opt.state[p]["exp_avg"].shape == shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_slotted_low_precision_updates_like_torch_adamw(dtype):
    """Regression: the per-slot bias correction was once computed in the parameter's dtype;
    in bf16, beta2 = 0.999 rounds to 1.0, 1 - beta2**t to 0, and the first step was lost."""
    g = make_gen(2)
    # Small values, so that dtype resolution does not swallow lr-sized updates.
    p0 = (0.01 * torch.randn(6, 4, generator=g)).to(dtype)
    p = p0.clone().requires_grad_(True)
    ref = p0.clone().requires_grad_(True)
    opt = SlotAdamW([{"params": [p], "slot_dims": [1]}], lr=1e-3)
    opt_ref = torch_adamw([ref], lr=1e-3)
    for i in range(5):
        grad = torch.randn(6, 4, generator=g).to(dtype)
        p.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        opt_ref.step()
        if i == 0:
            assert (p.detach() - p0).abs().float().mean() > 0.5e-3, "first step was lost"
        torch.testing.assert_close(p.detach().float(), ref.detach().float(),
                                   rtol=0, atol=1e-4)


# --------------------------------------------------------------------------
# reset_slots on SlotAdamW: bias correction restarts per slot
# --------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_reset_slots_restarts_adam_per_slot(weight_decay):
    m, r, prior = 5, 4, 12
    reset = torch.tensor([1, 3])
    kept = torch.tensor([0, 2])
    g = make_gen(3)
    p = torch.randn(m, r, generator=g).requires_grad_(True)
    never_reset = p.detach().clone().requires_grad_(True)
    opt = SlotAdamW([{"params": [p], "slot_dims": [1]}], lr=LR, betas=BETAS, eps=EPS,
                    weight_decay=weight_decay)
    opt_ref = torch_adamw([never_reset], weight_decay=weight_decay)
    for _ in range(prior):
        grad = torch.randn(m, r, generator=g)
        p.grad, never_reset.grad = grad.clone(), grad.clone()
        opt.step()
        opt_ref.step()

    state = opt.state[p]
    exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
    avg_before, sq_before = exp_avg.clone(), exp_avg_sq.clone()
    reset_slots(opt, p, reset, dim=1)
    # In place: the same tensor objects.
    assert state["exp_avg"] is exp_avg and state["exp_avg_sq"] is exp_avg_sq
    assert state["step"] is step
    assert torch.all(exp_avg[:, reset] == 0) and torch.all(exp_avg_sq[:, reset] == 0)
    assert torch.equal(exp_avg[:, kept], avg_before[:, kept])
    assert torch.equal(exp_avg_sq[:, kept], sq_before[:, kept])
    assert step.tolist() == [[prior, 0, prior, 0]]

    # One more step.
    p_before = p.detach().clone()
    grad = torch.randn(m, r, generator=g)
    p.grad, never_reset.grad = grad.clone(), grad.clone()
    opt.step()
    opt_ref.step()
    assert step.tolist() == [[prior + 1, 1, prior + 1, 1]]
    # Reset columns: exactly what a fresh AdamW does on its first step.
    fresh = fresh_first_update(p_before[:, reset], grad[:, reset], weight_decay=weight_decay)
    torch.testing.assert_close(p.detach()[:, reset], fresh, rtol=1e-6, atol=1e-7)
    # Fresh Adam's first step moves every coordinate by lr * sign(grad) (+ weight decay).
    first_move = (p.detach()[:, reset] - p_before[:, reset] * (1 - LR * weight_decay))
    torch.testing.assert_close(first_move, -LR * grad[:, reset].sign(), rtol=1e-4, atol=1e-7)
    # Kept columns: as if nothing had been reset.
    torch.testing.assert_close(p.detach()[:, kept], never_reset.detach()[:, kept],
                               rtol=1e-6, atol=1e-6)


def test_reset_slots_dim0_and_wrapper_unwrapping():
    """Rows (dim 0) reset through an Accelerate-style wrapper exposing ``.optimizer``."""
    p = torch.randn(4, 3, generator=make_gen(4)).requires_grad_(True)
    opt = SlotAdamW([{"params": [p], "slot_dims": [0]}], lr=LR)
    for _ in range(3):
        p.grad = torch.ones(4, 3)
        opt.step()

    class Wrapper:
        def __init__(self, inner):
            self.optimizer = inner

    wrapped = Wrapper(Wrapper(opt))
    assert find_state(wrapped, p) is opt.state[p]
    reset_slots(wrapped, p, torch.tensor([2]), dim=0)
    st = opt.state[p]
    assert st["step"].flatten().tolist() == [3, 3, 0, 3]
    assert torch.all(st["exp_avg"][2] == 0) and torch.all(st["exp_avg"][[0, 1, 3]] != 0)


def test_reset_slots_without_state_or_slots_is_a_noop():
    p = torch.randn(3, 2, requires_grad=True)
    opt = SlotAdamW([{"params": [p], "slot_dims": [1]}], lr=LR)
    reset_slots(opt, p, torch.tensor([0]), dim=1)  # no state yet
    reset_slots(None, p, torch.tensor([0]), dim=1)  # no optimizer
    assert find_state(opt, p) is None
    p.grad = torch.ones(3, 2)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    reset_slots(opt, p, torch.tensor([], dtype=torch.int64), dim=1)
    for k, v in opt.state[p].items():
        assert torch.equal(v, before[k])


# --------------------------------------------------------------------------
# Why it matters: torch.optim.AdamW cannot restart one slot's bias correction
# --------------------------------------------------------------------------


def test_torch_adamw_reset_warns_and_first_update_is_inflated(rearm_warning):
    """SPEC section 3: zeroed moments with a running step counter give a first update ~3x lr.

    The inflation needs the tensor's counter to be large enough for the bias correction to
    have decayed (with beta2 = 0.999 after ~10 steps the correction still shrinks the
    update; after thousands of steps the first update is ~(1 - beta1) / sqrt(1 - beta2)
    = 3.16 times the learning rate).
    """
    m, r, prior = 3, 4, 2000
    g = make_gen(5)
    p = torch.randn(m, r, generator=g).requires_grad_(True)
    opt = torch_adamw([p])
    for _ in range(prior):
        p.grad = torch.randn(m, r, generator=g)
        opt.step()

    slots = torch.tensor([1, 3])
    with pytest.warns(UserWarning, match="SlotAdamW"):
        reset_slots(opt, p, slots, dim=1)
    st = opt.state[p]
    assert torch.all(st["exp_avg"][:, slots] == 0) and torch.all(st["exp_avg_sq"][:, slots] == 0)
    assert float(st["step"]) == prior  # the shared counter cannot be reset per slot
    # Warns only once per process.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reset_slots(opt, p, slots, dim=1)

    p_before = p.detach().clone()
    grad = torch.randn(m, r, generator=g)
    p.grad = grad
    opt.step()
    move = (p.detach() - p_before)[:, slots].abs()
    assert torch.all(move > 2 * LR), move  # a fresh Adam would move by lr exactly
    fresh = fresh_first_update(p_before[:, slots], grad[:, slots])
    assert torch.all((fresh - p_before[:, slots]).abs() <= LR * (1 + 1e-5))

    # The same reset with SlotAdamW gives the fresh-Adam update.
    q = p_before.clone().requires_grad_(True)
    slot_opt = SlotAdamW([{"params": [q], "slot_dims": [1]}], lr=LR)
    q.grad = torch.zeros(m, r)
    slot_opt.step()  # create state, then pretend many steps have passed
    slot_opt.state[q]["step"].fill_(prior)
    slot_opt.state[q]["exp_avg"].copy_(torch.randn(m, r, generator=g))
    slot_opt.state[q]["exp_avg_sq"].copy_(torch.rand(m, r, generator=g))
    q.detach().copy_(p_before)
    reset_slots(slot_opt, q, slots, dim=1)
    q.grad = grad.clone()
    slot_opt.step()
    torch.testing.assert_close(q.detach()[:, slots], fresh, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------
# reset_param_state
# --------------------------------------------------------------------------


@pytest.mark.parametrize("make_opt", [
    lambda ps: SlotAdamW([{"params": ps, "slot_dims": [1, -1]}], lr=LR),
    lambda ps: torch_adamw(ps),
], ids=["SlotAdamW", "torch.AdamW"])
def test_reset_param_state_zeros_in_place(make_opt):
    a = torch.randn(4, 3, generator=make_gen(6)).requires_grad_(True)
    b = torch.randn(5, generator=make_gen(7)).requires_grad_(True)
    opt = make_opt([a, b])
    for _ in range(4):
        a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
        opt.step()
    before = {p: dict(opt.state[p]) for p in (a, b)}
    keys_before = {p: list(opt.state[p].keys()) for p in (a, b)}
    reset_param_state(opt, [a])
    st = opt.state[a]
    assert list(st.keys()) == keys_before[a]
    for key, value in st.items():
        assert value is before[a][key], key  # same tensor object
        assert torch.all(value == 0), key
    # Other parameters untouched.
    for key, value in opt.state[b].items():
        assert value is before[b][key]
        assert torch.any(value != 0), key
    # After a full reset, the next step is a fresh Adam's first step.
    a_before = a.detach().clone()
    grad = torch.randn(4, 3, generator=make_gen(8))
    a.grad = grad.clone()
    b.grad = torch.randn(5)
    opt.step()
    torch.testing.assert_close(a.detach(), fresh_first_update(a_before, grad),
                               rtol=1e-6, atol=1e-7)


def test_reset_param_state_ignores_params_without_state():
    a = torch.randn(3, requires_grad=True)
    opt = SlotAdamW([a], lr=LR)
    reset_param_state(opt, [a])
    reset_param_state(None, [a])
    assert find_state(opt, a) is None


# --------------------------------------------------------------------------
# Checkpoint round trip
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_keeps_per_slot_steps_exact(dtype):
    """The per-slot "step" vector is not cast to the parameter dtype on load (SPEC 9)."""
    g = make_gen(9)
    m, r, n = 5, 4, 3

    def build(params):
        return SlotAdamW([{"params": params[:2], "slot_dims": [1, 0]},
                          {"params": params[2:], "lr": 2 * LR}], lr=LR, weight_decay=0.01)

    U = torch.randn(m, r, generator=g).to(dtype).requires_grad_(True)
    Vh = torch.randn(r, n, generator=g).to(dtype).requires_grad_(True)
    s = torch.rand(r, generator=g).to(dtype).requires_grad_(True)
    params = [U, Vh, s]
    opt = build(params)
    grads = [torch.randn((1001 + 6,) + tuple(p.shape), generator=g).to(dtype) for p in params]
    for t in range(1001):
        if t == 1001 - 7:
            reset_slots(opt, U, torch.tensor([2]), dim=1)
            reset_slots(opt, Vh, torch.tensor([0, 3]), dim=0)
        for p, gr in zip(params, grads):
            p.grad = gr[t].clone()
        opt.step()
    assert opt.state[U]["step"].tolist() == [[1001, 1001, 7, 1001]]
    assert opt.state[Vh]["step"].flatten().tolist() == [7, 1001, 1001, 7]

    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded_sd = torch.load(buf, weights_only=True)

    clones = [p.detach().clone().requires_grad_(True) for p in params]
    opt2 = build(clones)
    opt2.load_state_dict(loaded_sd)
    st_U, st_Vh, st_s = (opt2.state[p] for p in clones)
    assert st_U["step"].dtype == torch.float32 and st_U["step"].shape == (1, r)
    assert st_U["step"].tolist() == [[1001, 1001, 7, 1001]]
    assert st_Vh["step"].flatten().tolist() == [7, 1001, 1001, 7]
    assert float(st_s["step"]) == 1001
    for p, q in zip(params, clones):
        assert opt2.state[q]["exp_avg"].dtype == dtype
        assert torch.equal(opt2.state[q]["exp_avg"], opt.state[p]["exp_avg"])
        assert torch.equal(opt2.state[q]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
    assert opt2.param_groups[0]["slot_dims"] == [1, 0]
    assert opt2.param_groups[1]["lr"] == 2 * LR

    # Continue both: identical trajectories.
    for t in range(1001, 1001 + 6):
        for p, q, gr in zip(params, clones, grads):
            p.grad, q.grad = gr[t].clone(), gr[t].clone()
        opt.step()
        opt2.step()
        for p, q in zip(params, clones):
            assert torch.equal(p, q)
    assert st_U["step"].tolist() == [[1007, 1007, 13, 1007]]


# --------------------------------------------------------------------------
# Integration with SpectralLinear.swap_
# --------------------------------------------------------------------------


def test_swap_resets_exactly_the_changed_slots():
    torch.manual_seed(0)
    layer = SpectralLinear.from_linear(nn.Linear(12, 10), rank=4)
    assert layer.idx.tolist() == [0, 1, 2, 3]
    opt = SlotAdamW([{"params": [layer.U_active, layer.Vh_active, layer.s],
                      "slot_dims": [1, 0, -1]}], lr=1e-2)
    groups_before = [dict(g) for g in opt.param_groups]
    param_ids = {name: id(p) for name, p in layer.named_parameters()}
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    g = make_gen(10)
    x = torch.randn(16, 12, generator=g)
    target = torch.randn(16, 10, generator=g)
    n_steps = 3
    for _ in range(n_steps):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        layer.normalize_()

    U_a_before = layer.U_active.detach().clone()
    Vh_a_before = layer.Vh_active.detach().clone()
    states_before = {name: {k: v.clone() for k, v in opt.state[p].items()}
                     for name, p in (("U", layer.U_active), ("Vh", layer.Vh_active),
                                     ("s", layer.s))}
    U_full, _, Vh_full = layer.effective_factors()

    new_idx = torch.tensor([1, 3, 6, 8])  # keeps 1, 3 (slots 1, 3); brings 6, 8
    slots = layer.swap_(new_idx, opt)

    assert slots.dtype == torch.int64
    assert slots.tolist() == [0, 2]
    assert sorted(layer.idx.tolist()) == [1, 3, 6, 8]
    assert layer.idx.tolist() == [6, 1, 8, 3]  # kept indices stay in their slots
    kept, changed = [1, 3], [0, 2]
    # Kept slots keep their (trained) vectors, changed slots load the frozen factors.
    assert torch.equal(layer.U_active[:, kept], U_a_before[:, kept])
    assert torch.equal(layer.Vh_active[kept], Vh_a_before[kept])
    assert torch.equal(layer.U_active[:, changed], U_full[:, [6, 8]])
    assert torch.equal(layer.Vh_active[changed], Vh_full[[6, 8]])
    # The outgoing trained vectors moved into the frozen factors, at their indices.
    U_eff, _, Vh_eff = layer.effective_factors()
    assert torch.equal(U_eff[:, [0, 2]], U_a_before[:, changed])
    assert torch.equal(Vh_eff[[0, 2]], Vh_a_before[changed])

    for name, p, dim in (("U", layer.U_active, 1), ("Vh", layer.Vh_active, 0)):
        st, old = opt.state[p], states_before[name]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(st[key].index_select(dim, slots) == 0), (name, key)
            keep = torch.tensor(kept)
            assert torch.equal(st[key].index_select(dim, keep), old[key].index_select(dim, keep))
            assert torch.any(old[key].index_select(dim, keep) != 0)
        assert st["step"].flatten().tolist() == [0, n_steps, 0, n_steps], name
    # s keeps its moments and scalar counter.
    for key, value in opt.state[layer.s].items():
        assert torch.equal(value, states_before["s"][key]), key

    # Parameter objects, shapes and param groups unchanged.
    assert {name: id(p) for name, p in layer.named_parameters()} == param_ids
    assert {name: tuple(p.shape) for name, p in layer.named_parameters()} == shapes
    assert len(opt.param_groups) == len(groups_before)
    for now, before in zip(opt.param_groups, groups_before):
        assert now.keys() == before.keys()
        assert [id(p) for p in now["params"]] == [id(p) for p in before["params"]]
        assert {k: v for k, v in now.items() if k != "params"} == \
            {k: v for k, v in before.items() if k != "params"}

    # Training continues; the counters advance per slot.
    opt.zero_grad()
    ((layer(x) - target) ** 2).mean().backward()
    opt.step()
    assert opt.state[layer.U_active]["step"].flatten().tolist() == [1, n_steps + 1, 1,
                                                                    n_steps + 1]


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1e-3), "lr"),
    (dict(betas=(1.0, 0.999)), "betas"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(-0.1, 0.999)), "betas"),
    (dict(eps=-1.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        SlotAdamW([p], **kwargs)


@pytest.mark.parametrize("slot_dims", [[1], [1, 0, -1]])
def test_slot_dims_length_mismatch_raises(slot_dims):
    a = torch.zeros(3, 2, requires_grad=True)
    b = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="slot_dims"):
        SlotAdamW([{"params": [a, b], "slot_dims": slot_dims}], lr=LR)


# --------------------------------------------------------------------------
# The foreach step is the single-tensor step, bit for bit
# --------------------------------------------------------------------------


@torch.no_grad()
def _reference_step(params, slot_dims, states, lr, weight_decay):
    """SlotAdamW's step written per tensor with ``adamw_update_`` (the reference form)."""
    for p, dim in zip(params, slot_dims):
        if p.grad is None:
            continue
        if p not in states:
            shape = [1] * p.dim()
            if dim != -1:
                shape[dim] = p.shape[dim]
            states[p] = {"step": torch.zeros(shape if dim != -1 else (), dtype=torch.float32),
                         "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        optim_mod.adamw_update_(p, p.grad, states[p], lr, *BETAS, EPS, weight_decay)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_foreach_step_is_bit_identical_to_the_per_tensor_update(weight_decay):
    """Mixed groups (scalar and per-slot counters, fp32 and bf16, a skipped gradient, slots
    restarted mid-way so the counters differ per slot): every parameter and state tensor
    equals the per-tensor ``adamw_update_`` result exactly."""
    g = make_gen(7)
    specs = [((6, 4), 1, torch.float32), ((4, 9), 0, torch.float32), ((5,), -1, torch.float32),
             ((3, 4), 1, torch.bfloat16), ((7,), -1, torch.bfloat16), ((2, 3), -1, torch.float32)]
    ours = [torch.randn(s, generator=g).to(dt).requires_grad_(True) for s, _, dt in specs]
    ref = [p.detach().clone().requires_grad_(True) for p in ours]
    dims = [d for _, d, _ in specs]
    opt = SlotAdamW([{"params": ours[:3], "slot_dims": dims[:3]},
                     {"params": ours[3:], "slot_dims": dims[3:]}], lr=LR, betas=BETAS,
                    eps=EPS, weight_decay=weight_decay)
    ref_states: dict = {}
    for step in range(12):
        for i, (a, b) in enumerate(zip(ours, ref)):
            skipped = i == 5 and step % 3 == 1  # this one misses some steps entirely
            grad = None if skipped else torch.randn(a.shape, generator=g).to(a.dtype)
            a.grad = b.grad = None if grad is None else grad.clone()
        opt.step()
        _reference_step(ref, dims, ref_states, LR, weight_decay)
        if step in (3, 8):  # restart some slots: the per-slot counters diverge
            for i in (0, 3):
                reset_slots(opt, ours[i], torch.tensor([0, 2]), dim=1)
                reset_slots(None, ref[i], torch.tensor([0, 2]), dim=1)
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    ref_states[ref[i]][key].index_fill_(1, torch.tensor([0, 2]), 0)
            reset_slots(opt, ours[1], torch.tensor([1]), dim=0)
            for key in ("step", "exp_avg", "exp_avg_sq"):
                ref_states[ref[1]][key].index_fill_(0, torch.tensor([1]), 0)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), f"step {step}: parameter differs"
    assert not torch.equal(opt.state[ours[0]]["step"],
                           torch.full_like(opt.state[ours[0]]["step"], 12.0))
    for a, b in zip(ours, ref):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[a][key], ref_states[b][key]), key
