"""GaLore: the optimizer against an independent reference, its state, and the method.

The reference below is written from the paper's update rule (Zhao et al. 2024, Algorithm 2),
not from the optimizer's code: every ``gap`` steps take ``P`` from the SVD of the gradient,
project, run Adam in the low-rank space, project back, scale, step.
"""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from conftest import TinyMLP, tiny_gpt2, tiny_llama, token_batch

import sparse_spectral.methods.galore  # noqa: F401  (registers "galore")
from sparse_spectral.methods import make_method
from sparse_spectral.methods.base import method_from_state
from sparse_spectral.methods.galore import GaLore, GaLoreConfig
from sparse_spectral.methods.galore_optim import (
    GaLoreAdamW,
    compute_projection,
    project,
    project_back,
    projection_side,
)

BETAS = (0.9, 0.999)
EPS = 1e-8
LR = 1e-2


def _grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def reference_galore(w0, grads, rank, gap, lr, scale, weight_decay=0.0):
    """GaLore on one (m, n) weight with the 'std' projection, straight from the paper."""
    w = w0.clone()
    b1, b2 = BETAS
    m_t = v_t = p = None
    right = w.shape[0] >= w.shape[1]  # std: project the smaller dimension
    for t, g in enumerate(grads, start=1):
        if (t - 1) % gap == 0:
            u, _, vh = torch.linalg.svd(g, full_matrices=False)
            p = vh[:rank] if right else u[:, :rank]
        r = g @ p.T if right else p.T @ g
        m_t = (1 - b1) * r if m_t is None else b1 * m_t + (1 - b1) * r
        v_t = (1 - b2) * r * r if v_t is None else b2 * v_t + (1 - b2) * r * r
        n_t = (m_t / (1 - b1**t)) / ((v_t / (1 - b2**t)).sqrt() + EPS)
        w = w - lr * scale * (n_t @ p if right else p @ n_t)
        w = w * (1 - lr * weight_decay)  # GaLore's AdamW decays after the update
    return w


def _run_galore(w0, grads, **group):
    w = w0.clone().requires_grad_(True)
    opt = GaLoreAdamW([{"params": [w], **group}], lr=LR, betas=BETAS, eps=EPS,
                      weight_decay=group.pop("weight_decay", 0.0))
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach(), opt


# ------------------------------------------------------------------ optimizer numerics
@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_matches_paper_reference(shape, weight_decay):
    w0 = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    grads = _grads(shape, 7)
    expected = reference_galore(w0, grads, rank=3, gap=3, lr=LR, scale=0.25,
                                weight_decay=weight_decay)
    ours, _ = _run_galore(w0, grads, rank=3, update_proj_gap=3, scale=0.25, proj_type="std",
                          weight_decay=weight_decay)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, w0, atol=1e-3)  # it did move


def test_moments_survive_a_projection_refresh():
    """Not resetting the moments at a refresh changes the result: the test can tell."""
    w0 = torch.zeros(12, 8)
    grads = _grads((12, 8), 4)
    ours, opt = _run_galore(w0, grads, rank=2, update_proj_gap=3)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert float(state["step"]) == 4.0
    # One more step from a fresh moment at step 4 would differ from ours.
    restarted = reference_galore(reference_galore(w0, grads[:3], 2, 3, LR, 0.25), grads[3:],
                                 2, 3, LR, 0.25)
    assert not torch.allclose(ours, restarted, atol=1e-7)
    torch.testing.assert_close(ours, reference_galore(w0, grads, 2, 3, LR, 0.25),
                               rtol=0, atol=1e-6)


def test_first_update_lies_in_the_projected_subspace():
    g = _grads((12, 8), 1)[0]
    w0 = torch.zeros(12, 8)
    w1, opt = _run_galore(w0, [g], rank=2, update_proj_gap=5)
    p = opt.state[opt.param_groups[0]["params"][0]]["projection"]  # (2, 8), orthonormal rows
    torch.testing.assert_close(p @ p.T, torch.eye(2), rtol=0, atol=1e-5)
    delta = w1 - w0
    torch.testing.assert_close(delta - delta @ p.T @ p, torch.zeros(12, 8), rtol=0, atol=1e-7)
    assert delta.abs().max() > 1e-3


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_plain_groups_match_torch_adamw_exactly(weight_decay):
    g = torch.Generator().manual_seed(3)
    shapes = [(5, 7), (7,), ()]
    ref = [torch.randn(s, generator=g).requires_grad_(True) for s in shapes]
    ours = [p.detach().clone().requires_grad_(True) for p in ref]
    target = torch.randn(12, 8, generator=g).requires_grad_(True)
    opt_ref = torch.optim.AdamW(ref, lr=3e-2, betas=BETAS, eps=EPS,
                                weight_decay=weight_decay, foreach=False)
    opt_ours = GaLoreAdamW([{"params": ours}, {"params": [target], "rank": 2}], lr=3e-2,
                           betas=BETAS, eps=EPS, weight_decay=weight_decay)
    for _ in range(10):
        for a, b in zip(ref, ours):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        target.grad = torch.randn(12, 8, generator=g)
        opt_ref.step()
        opt_ours.step()
    for a, b in zip(ref, ours):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        torch.testing.assert_close(opt_ours.state[b]["exp_avg_sq"], opt_ref.state[a]["exp_avg_sq"],
                                   rtol=0, atol=0)


@pytest.mark.parametrize("proj_type, shape, side, moment, projection", [
    ("std", (12, 8), "right", (12, 3), (3, 8)),
    ("std", (8, 12), "left", (3, 12), (8, 3)),
    ("reverse_std", (12, 8), "left", (3, 8), (12, 3)),
    ("reverse_std", (8, 12), "right", (8, 3), (3, 12)),
    ("left", (8, 12), "left", (3, 12), (8, 3)),
    ("right", (12, 8), "right", (12, 3), (3, 8)),
])
def test_state_is_projected_size_and_tensors_only(proj_type, shape, side, moment, projection):
    assert projection_side(shape, proj_type) == side
    _, opt = _run_galore(torch.zeros(shape), _grads(shape, 2), rank=3, proj_type=proj_type)
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert set(state) == {"step", "projection", "exp_avg", "exp_avg_sq"}
    assert all(torch.is_tensor(v) for v in state.values())
    assert state["step"].dtype == torch.float32 and state["step"].dim() == 0
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == moment
    assert state["projection"].shape == projection


def test_project_round_trip_and_svd_dtype():
    g = torch.randn(10, 6, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(5))
    p = compute_projection(g, 6, "right")  # full rank: project_back inverts project
    assert p.dtype == torch.bfloat16 and p.is_contiguous() and p.shape == (6, 6)
    g64 = g.double()
    p64 = compute_projection(g64, 6, "right")
    # P comes from a float32 SVD, so it is orthogonal to float32 accuracy only.
    back = project_back(project(g64, p64, "right"), p64, "right")
    torch.testing.assert_close(back, g64, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"rank=7 must be in \[1, min\(m, n\) = 6\]"):
        compute_projection(g, 7, "std")


def test_transposed_weight_follows_the_out_in_layout():
    """A Conv1D-style (in, out) weight flagged transposed steps like its nn.Linear twin."""
    shape, grads = (8, 8), _grads((8, 8), 5)  # square: 'std' must pick the (m, n) right side
    w0 = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    linear, _ = _run_galore(w0, grads, rank=2, update_proj_gap=2)
    wt = w0.T.clone().requires_grad_(True)
    opt = GaLoreAdamW([{"params": [wt], "rank": 2, "update_proj_gap": 2, "transposed": [True]}],
                      lr=LR, betas=BETAS, eps=EPS)
    for g in grads:
        wt.grad = g.T.clone()
        opt.step()
    torch.testing.assert_close(wt.detach().T, linear, rtol=0, atol=1e-6)
    assert opt.state[wt]["exp_avg"].shape == (8, 2)


def test_bad_galore_group_is_rejected():
    with pytest.raises(ValueError, match=r"proj_type='full' is unknown"):
        GaLoreAdamW([{"params": [torch.zeros(4, 4, requires_grad=True)], "rank": 2,
                      "proj_type": "full"}])
    with pytest.raises(ValueError, match=r"shape \(4,\) with rank=2"):
        GaLoreAdamW([{"params": [torch.zeros(4, requires_grad=True)], "rank": 2}])


# ------------------------------------------------------------------ method and resume
def _mlp():
    torch.manual_seed(0)
    return TinyMLP()


def _train(model, opt, first, last):
    for step in range(first, last + 1):
        x = torch.randn(6, 12, generator=torch.Generator().manual_seed(100 + step))
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_resume_via_weights_only_checkpoint_is_bit_exact():
    settings = dict(rank=2, update_proj_gap=3, exclude_modules=["head"])
    method = make_method("galore", **settings)
    straight = method.prepare(_mlp())
    opt = method.build_optimizer(straight, lr=LR, weight_decay=0.1)
    _train(straight, opt, 1, 10)

    method_a = make_method("galore", **settings)
    first = method_a.prepare(_mlp())
    opt_a = method_a.build_optimizer(first, lr=LR, weight_decay=0.1)
    _train(first, opt_a, 1, 4)  # stop between two refreshes (steps 1, 4, 7, 10)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt_a.state_dict(),
                "method": method_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    method_b = method_from_state(ckpt["method"])
    resumed = _mlp()
    resumed.load_state_dict(ckpt["model"])
    method_b.prepare(resumed)
    opt_b = method_b.build_optimizer(resumed, lr=LR, weight_decay=0.1)
    opt_b.load_state_dict(ckpt["optimizer"])
    _train(resumed, opt_b, 5, 10)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, r"rank=0 must be an int >= 1"),
    ({"rank": 2.5}, r"rank=2.5 must be an int \(got float\)"),
    ({"update_proj_gap": 0}, r"update_proj_gap=0 must be an int >= 1"),
    ({"scale": 0.0}, r"scale=0.0 must be a finite number > 0"),
    ({"scale": -1}, r"scale=-1 must be a finite number > 0"),
    ({"proj_type": "full"}, r"proj_type='full' is unknown; allowed: std, reverse_std, left, right"),
])
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_method("galore", **kwargs)


def test_config_defaults_and_rank_too_large_names_the_layer():
    assert all(f.metadata.get("help") for f in dataclasses.fields(GaLoreConfig))
    cfg = GaLoreConfig()
    assert (cfg.rank, cfg.update_proj_gap, cfg.scale, cfg.proj_type) == (8, 200, 0.25, "std")
    with pytest.raises(ValueError, match=r"rank=9 .* layer 'proj' .* \[1, min\(m, n\) = 8\]"):
        make_method("galore", rank=9).prepare(_mlp())


def test_param_groups_split_and_merge_is_a_copy():
    method = make_method("galore", rank=2, exclude_modules=["head"])
    model = method.prepare(_mlp())
    assert isinstance(method, GaLore) and method.target_names == ["blocks.0.fc", "blocks.1.fc",
                                                                  "proj"]
    groups = {g["name"]: g for g in method.param_groups(model, weight_decay=0.1)}
    galore = groups["galore"]
    assert [id(p) for p in galore["params"]] == [id(model.blocks[0]["fc"].weight),
                                                 id(model.blocks[1]["fc"].weight),
                                                 id(model.proj.weight)]
    assert method.target_ids == {id(p) for p in galore["params"]}
    assert (galore["rank"], galore["update_proj_gap"], galore["scale"], galore["proj_type"],
            galore["weight_decay"]) == (2, 200, 0.25, "std", 0.1)
    assert [id(p) for p in groups["decay"]["params"]] == [id(model.head.weight)]
    assert len(groups["no_decay"]["params"]) == 3  # the biases stay dense
    merged = method.merge(model)
    assert merged is not model
    for a, b in zip(model.state_dict().values(), merged.state_dict().values()):
        assert torch.equal(a, b)


def _lm_steps(model, method, steps=8, lr=1e-2):
    opt = method.build_optimizer(model, lr=lr)
    batch = token_batch(0)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return opt, losses


def test_llama_trains_with_the_14_projection_weights():
    model = tiny_llama()
    method = make_method("galore", rank=4, update_proj_gap=3)
    method.prepare(model)
    galore = next(g for g in method.param_groups(model) if g["name"] == "galore")
    assert len(galore["params"]) == 14 and not any(galore["transposed"])
    suffixes = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {n.rsplit(".", 1)[-1] for n in method.target_names} == suffixes
    opt, losses = _lm_steps(model, method)
    assert losses[-1] < losses[0] - 0.05, losses
    q = model.model.layers[0].self_attn.q_proj.weight  # (32, 32): right side
    assert opt.state[q]["exp_avg"].shape == (32, 4)
    assert all(math.isfinite(x) for x in losses)


def test_gpt2_conv1d_targets_are_handled_transposed():
    model = tiny_gpt2()
    method = make_method("galore", rank=4, update_proj_gap=3)
    method.prepare(model)
    galore = next(g for g in method.param_groups(model) if g["name"] == "galore")
    assert len(galore["params"]) == 8 and all(galore["transposed"])
    opt, losses = _lm_steps(model, method)
    assert losses[-1] < losses[0] - 0.05, losses
    c_attn = model.transformer.h[0].attn.c_attn.weight  # stored (in=32, out=96): m=96 >= n=32
    assert tuple(c_attn.shape) == (32, 96)
    assert opt.state[c_attn]["exp_avg"].shape == (96, 4)
    assert opt.state[c_attn]["projection"].shape == (4, 32)
