"""APOLLO and APOLLO-Mini: the optimizer against a dense re-implementation, its state, the
methods, the engine (train, exact resume) and what is refused.

The reference below is written from the paper's update rule (Zhu et al. 2024, Algorithm 1,
with the norm-growth limiter and apollo-torch's bias correction and scale), not from the
optimizer's code: every ``gap`` steps draw a Gaussian ``P`` (entries N(0, 1/r)) from the
documented counter seed, project the smaller side, run Adam's moments there, scale the raw
gradient per channel (or per tensor) by ``||N|| / ||R||``, limit the norm growth, step.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from conftest import TinyMLP, tiny_gpt2, token_batch
from engine_helpers import compare_and_render, shakespeare_excerpt, train_summary
from safetensors.torch import load_file

from sparse_spectral._util.seeding import counter_seed
from sparse_spectral.cli import main
from sparse_spectral.methods import make_method, method_for_run, method_from_state
from sparse_spectral.methods.apollo import Apollo, ApolloConfig
from sparse_spectral.methods.apollo_optim import ApolloAdamW, random_projection
from sparse_spectral.methods.galore_optim import GaLoreAdamW
from sparse_spectral.methods.guard import MethodGuardError
from sparse_spectral.tasks.lm import LM, LMSettings
from sparse_spectral.training.runner import check_fsdp2

BETAS, EPS, LR = (0.9, 0.999), 1e-6, 1e-2


def _grads(shape, steps, seed=0, growth=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g) * growth**t).to(dtype) for t in range(steps)]


def reference_apollo(w0, grads, rank, gap, scale, scale_type, gamma=1.01, wd=0.0, seed=0):
    """APOLLO on one (m, n) weight (projected tensor 0), straight from the paper.

    Returns the final weight and how many steps the limiter scaled down.
    """
    w, (b1, b2) = w0.clone(), BETAS
    m, n = w.shape
    right = m >= n  # the smaller dimension is projected
    m_t = v_t = previous = None
    limited = 0
    for t, g in enumerate(grads, start=1):
        if (t - 1) % gap == 0:
            draw = torch.Generator().manual_seed(counter_seed(seed, 0, (t - 1) // gap))
            p = torch.randn((rank, n) if right else (m, rank), generator=draw) / math.sqrt(rank)
            p = p.to(w.dtype)
        r = g @ p.T if right else p.T @ g  # (m, r) or (r, n)
        m_t = (1 - b1) * r if m_t is None else b1 * m_t + (1 - b1) * r
        v_t = (1 - b2) * r * r if v_t is None else b2 * v_t + (1 - b2) * r * r
        n_t = m_t / (v_t.sqrt() + EPS)
        if scale_type == "tensor":
            s = (n_t**2).sum().sqrt() / ((r**2).sum().sqrt() + 1e-8)
        else:  # one factor per row (right side) or per column (left side) of G
            axis = 1 if right else 0
            s = (n_t**2).sum(axis, keepdim=True).sqrt() / ((r**2).sum(axis, keepdim=True).sqrt()
                                                           + 1e-8)
        u = g * s
        norm = (u**2).sum().sqrt()
        if gamma and previous is not None and norm / (previous + 1e-8) > gamma:
            u = u * gamma / (norm / (previous + 1e-8))
            limited += 1
        if gamma:
            previous = (u**2).sum().sqrt()
        step = LR * math.sqrt(scale) * math.sqrt(1 - b2**t) / (1 - b1**t)
        w = (w - step * u) * (1 - LR * wd)
    return w, limited


def _run(w0, grads, weight_decay=0.0, **group):
    w = w0.clone().requires_grad_(True)
    opt = ApolloAdamW([{"params": [w], **group}], lr=LR, betas=BETAS, eps=EPS,
                      weight_decay=weight_decay)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach(), opt


VARIANTS = {"apollo": dict(rank=3, scale=1.0, scale_type="channel"),
            "mini": dict(rank=1, scale=128.0, scale_type="tensor")}


# ------------------------------------------------------------------ optimizer numerics
@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("gamma, wd", [(1.01, 0.0), (1.01, 0.1), (0, 0.1)])
def test_matches_the_dense_reference(shape, variant, gamma, wd):
    settings = VARIANTS[variant]
    w0 = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = _grads(shape, 8, growth=1.1)  # growing gradients: the limiter binds
    expected, limited = reference_apollo(w0, grads, gap=3, gamma=gamma, wd=wd, seed=5,
                                         **settings)
    ours, _ = _run(w0, grads, weight_decay=wd, update_proj_gap=3, norm_growth_limit=gamma,
                   seed=5, **settings)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)
    assert (limited > 0) == bool(gamma)
    assert (ours - w0).abs().max() > 1e-2  # it did move


def test_the_test_can_tell_a_missing_limiter_and_a_wrong_projection():
    w0, grads = torch.zeros(12, 8, dtype=torch.float64), _grads((12, 8), 6, growth=1.1)
    ours, _ = _run(w0, grads, update_proj_gap=3, **VARIANTS["apollo"])
    unlimited, _ = reference_apollo(w0, grads, gap=3, gamma=0, **VARIANTS["apollo"])
    other_seed, _ = reference_apollo(w0, grads, gap=3, seed=1, **VARIANTS["apollo"])
    never_refreshed, _ = reference_apollo(w0, grads, gap=100, **VARIANTS["apollo"])
    for wrong in (unlimited, other_seed, never_refreshed):
        assert not torch.allclose(ours, wrong, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape, channel_axis", [((12, 8), 0), ((8, 12), 1)])
def test_the_first_step_scales_the_raw_gradient_per_channel(shape, channel_axis):
    g = _grads(shape, 1)[0]
    w1, _ = _run(torch.zeros(shape, dtype=torch.float64), [g], **VARIANTS["apollo"])
    ratio = w1 / g  # one factor per channel (a row on the right side, a column on the left)
    spread = ratio.amax(1 - channel_axis) - ratio.amin(1 - channel_axis)
    assert spread.abs().max() < 1e-12
    assert ratio.amax() - ratio.amin() > 1e-4  # ... but the channels differ
    w1, _ = _run(torch.zeros(shape, dtype=torch.float64), [g], **VARIANTS["mini"])
    assert ((w1 / g).amax() - (w1 / g).amin()).abs() < 1e-12  # tensor-wise: one factor


def test_the_projection_is_gaussian_counter_seeded_and_on_the_smaller_side():
    big = random_projection((4096, 512), 64, key=7, device="cpu", dtype=torch.float32)
    assert big.shape == (64, 512)
    assert abs(big.mean().item()) < 0.01 and big.var().item() == pytest.approx(1 / 64, rel=0.02)
    assert random_projection((8, 12), 3, 7, "cpu", torch.float64).shape == (8, 3)
    same = random_projection((4096, 512), 64, key=7, device="cpu", dtype=torch.float32)
    assert torch.equal(big, same)
    assert not torch.equal(big, random_projection((4096, 512), 64, 8, "cpu", torch.float32))
    bf16 = random_projection((4096, 512), 64, 7, "cpu", torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, big.to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"rank=9 must be in \[1, min\(m, n\) = 8\]"):
        random_projection((8, 12), 9, 0, "cpu", torch.float32)


@pytest.mark.parametrize("shape, moment", [((12, 8), (12, 3)), ((8, 12), (3, 12))])
def test_state_is_small_tensors_only_and_resumes_exactly(shape, moment):
    w0, grads = torch.randn(shape, dtype=torch.bfloat16), _grads(shape, 7, dtype=torch.bfloat16)
    straight, _ = _run(w0, grads, update_proj_gap=2, **VARIANTS["apollo"])
    _, opt = _run(w0, grads[:3], update_proj_gap=2, **VARIANTS["apollo"])  # mid-refresh
    state = opt.state[opt.param_groups[0]["params"][0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "limiter_norm"}  # no P, no seed
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == moment
    assert state["step"].dtype == torch.float32 and float(state["step"]) == 3.0
    assert state["limiter_norm"].dtype == torch.bfloat16 and state["limiter_norm"].dim() == 0
    buf = io.BytesIO()
    torch.save({"w": opt.param_groups[0]["params"][0].detach(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    w = saved["w"].clone().requires_grad_(True)
    resumed = ApolloAdamW([{"params": [w], "update_proj_gap": 2, **VARIANTS["apollo"]}], lr=LR,
                          betas=BETAS, eps=EPS)
    resumed.load_state_dict(saved["opt"])
    assert resumed.state[w]["limiter_norm"].dtype == torch.bfloat16
    for g in grads[3:]:
        w.grad = g.clone()
        resumed.step()
    assert torch.equal(w.detach(), straight)


def test_plain_groups_match_torch_adamw_exactly():
    g = torch.Generator().manual_seed(3)
    ref = [torch.randn(s, generator=g).requires_grad_(True) for s in [(5, 7), (7,)]]
    ours = [p.detach().clone().requires_grad_(True) for p in ref]
    target = torch.randn(12, 8, generator=g).requires_grad_(True)
    opt_ref = torch.optim.AdamW(ref, lr=3e-2, weight_decay=0.1, foreach=False)
    opt_ours = ApolloAdamW([{"params": ours}, {"params": [target], "rank": 2}], lr=3e-2,
                           weight_decay=0.1)
    for _ in range(6):
        for a, b in zip(ref, ours):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        target.grad = torch.randn(12, 8, generator=g)
        opt_ref.step()
        opt_ours.step()
    for a, b in zip(ref, ours):
        assert torch.equal(a, b)


def test_transposed_weight_follows_the_out_in_layout_and_tensors_have_their_own_draws():
    shape, grads = (8, 8), _grads((8, 8), 5)  # square: the (m, n) right side, rows as channels
    w0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    linear, _ = _run(w0, grads, update_proj_gap=2, **VARIANTS["apollo"])
    wt, other = w0.T.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    opt = ApolloAdamW([{"params": [other, wt], "update_proj_gap": 2, **VARIANTS["apollo"],
                        "transposed": [False, True]}], lr=LR, betas=BETAS, eps=EPS)
    for g in grads:
        other.grad, wt.grad = g.clone(), g.T.clone()
        opt.step()
    # wt is projected tensor 1: a different draw than tensor 0 gets with the same gradients
    assert not torch.allclose(wt.detach().T, other.detach(), atol=1e-6)
    torch.testing.assert_close(other.detach(), linear, rtol=0, atol=0)
    single = ApolloAdamW([{"params": [w0.T.clone().requires_grad_(True)], "update_proj_gap": 2,
                           **VARIANTS["apollo"], "transposed": [True]}], lr=LR, betas=BETAS,
                         eps=EPS)
    w = single.param_groups[0]["params"][0]
    for g in grads:
        w.grad = g.T.clone()
        single.step()
    torch.testing.assert_close(w.detach().T, linear, rtol=0, atol=1e-14)


@pytest.mark.parametrize("group, message", [
    ({"rank": 2, "proj_type": "std"}, r"proj_type is a GaLore setting"),
    ({"rank": 2, "scale_type": "row"}, r"scale_type='row' is unknown; allowed: channel, tensor"),
    ({"rank": 2, "norm_growth_limit": 0.5}, r"norm_growth_limit=0.5 must be 0 \(no limiter\) "
                                            r"or a finite number >= 1"),
    ({"rank": 2, "scale": 0}, r"scale=0 must be a finite number > 0"),
    ({"rank": 0}, r"rank=0 must be an int >= 1"),
    ({"rank": 5}, r"2-D weights with rank <= min\(m, n\); got shape \(4, 4\) with rank=5"),
])
def test_bad_apollo_group_is_rejected(group, message):
    with pytest.raises(ValueError, match=message):
        ApolloAdamW([{"params": [torch.zeros(4, 4, requires_grad=True)], **group}])


def test_each_projected_optimizer_refuses_the_other_methods_group():
    model = make_method("apollo", rank=2, exclude_modules=["head"]).prepare(TinyMLP())
    apollo = make_method("apollo", rank=2, exclude_modules=["head"])
    with pytest.raises(ValueError, match="scale_type is an APOLLO setting"):
        GaLoreAdamW(apollo.param_groups(model))
    galore = make_method("galore", rank=2, exclude_modules=["head"])
    with pytest.raises(ValueError, match="proj_type is a GaLore setting"):
        ApolloAdamW(galore.param_groups(model))


# ------------------------------------------------------------------ methods
def test_defaults_variant_presets_and_run_mapping():
    apollo, mini = make_method("apollo"), make_method("apollo_mini")
    assert isinstance(mini, Apollo) and mini.variant == "apollo_mini"
    assert (apollo.config.rank, apollo.config.apollo_scale, apollo.config.scale_type,
            apollo.config.update_proj_gap, apollo.config.norm_growth_limit) == (
        8, 1.0, "channel", 200, 1.01)
    assert (mini.config.rank, mini.config.apollo_scale, mini.config.scale_type) == (
        1, 128.0, "tensor")
    run = method_for_run("apollo_mini", rank=16, seed=4, interval=50, apollo_scale=256.0)
    assert (run.config.rank, run.config.seed, run.config.update_proj_gap,
            run.config.apollo_scale) == (1, 4, 50, 256.0)  # a run's rank is not Mini's
    assert method_for_run("apollo", rank=16).config.rank == 16
    # the state records the plain method with the resolved config, and reloads as it
    state = mini.state_dict()
    assert state["method"] == "apollo" and state["config"]["apollo_scale"] == 128.0
    assert method_from_state(state).config == mini.config
    with pytest.raises(ValueError, match=r"variant 'apollo_mini' fixes"):
        make_method("apollo_mini", rank=4)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, r"rank=0 must be an int >= 1"),
    ({"update_proj_gap": 0}, r"update_proj_gap=0 must be an int >= 1"),
    ({"apollo_scale": -1.0}, r"apollo_scale=-1.0 must be a finite number > 0"),
    ({"apollo_scale": float("inf")}, r"apollo_scale=inf must be None or a finite number"),
    ({"apollo_scale": 0}, r"apollo_scale=0 must be a finite number > 0"),
    ({"scale_type": "row"}, r"scale_type='row' is unknown; allowed: channel, tensor"),
    ({"norm_growth_limit": 0.9}, r"norm_growth_limit=0.9 must be 0 \(no limiter\)"),
    ({"seed": 1.5}, r"seed=1.5 must be an int"),
])
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_method("apollo", **kwargs)


def test_param_groups_and_the_planned_bytes_of_the_projected_state():
    method = make_method("apollo", rank=2, exclude_modules=["head"], seed=3)
    model = method.prepare(TinyMLP())
    groups = {g["name"]: g for g in method.param_groups(model, weight_decay=0.1)}
    apollo = groups["apollo"]
    assert [id(p) for p in apollo["params"]] == [id(model.blocks[0]["fc"].weight),
                                                 id(model.blocks[1]["fc"].weight),
                                                 id(model.proj.weight)]
    assert {k: apollo[k] for k in ("rank", "update_proj_gap", "scale", "scale_type",
                                   "norm_growth_limit", "seed", "weight_decay")} == {
        "rank": 2, "update_proj_gap": 200, "scale": 1.0, "scale_type": "channel",
        "norm_growth_limit": 1.01, "seed": 3, "weight_decay": 0.1}
    # (16, 12) -> (16, 2); (16, 16) -> (16, 2); proj (8, 16) -> (2, 16): 2 moments + a norm
    assert method.planned_state_numel(model) == {
        id(model.blocks[0]["fc"].weight): 2 * 32 + 1, id(model.blocks[1]["fc"].weight): 65,
        id(model.proj.weight): 65}


def test_gpt2_conv1d_targets_train_transposed():
    model = tiny_gpt2()
    method = make_method("apollo", rank=4, update_proj_gap=3)
    method.prepare(model)
    group = next(g for g in method.param_groups(model) if g["name"] == "apollo")
    assert len(group["params"]) == 8 and all(group["transposed"])
    opt = method.build_optimizer(model, lr=1e-2)
    batch, losses = token_batch(0), []
    for _ in range(8):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    c_attn = model.transformer.h[0].attn.c_attn.weight  # stored (in=32, out=96): m=96 >= n=32
    assert opt.state[c_attn]["exp_avg"].shape == (96, 4)


def test_plain_adamw_on_the_targets_is_stopped_by_the_guard():
    method = make_method("apollo", rank=2)
    model = method.prepare(TinyMLP())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 12)).sum().backward()
    with pytest.raises(MethodGuardError, match=r"APOLLO's target weights .*'scale_type'.*"
                                               r"ApolloAdamW"):
        optimizer.step()


def test_fsdp2_is_refused_with_the_reason():
    for name in ("apollo", "apollo_mini"):
        settings = LMSettings.from_dict({"method": name, "parallel": "fsdp2"})
        with pytest.raises(ValueError, match=rf"method '{name}' cannot run with --parallel "
                                             r"fsdp2: APOLLO projects .* --parallel ddp"):
            check_fsdp2(settings)


def test_config_field_order():
    assert [f for f in ApolloConfig().to_dict()] == [
        "target_modules", "exclude_modules", "rank", "update_proj_gap", "apollo_scale",
        "scale_type", "norm_growth_limit", "seed"]


# ------------------------------------------------------------------ the engine
@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return shakespeare_excerpt(tmp_path_factory, 40000)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))


def _settings(corpus_file, out, **kw) -> LMSettings:
    values = dict(text=str(corpus_file), model="gpt_micro", rank=4, block_size=16, batch_size=4,
                  num_training_steps=8, warmup_steps=2, eval_every=4, eval_tokens=256,
                  output_dir=str(out), method="apollo", method_options={"update_proj_gap": 3})
    return LMSettings.from_dict(values | kw)


def test_engine_resume_is_bit_exact(corpus_file, tmp_path):
    straight = train_summary(LM, _settings(corpus_file, tmp_path / "a"), progress=False)
    interrupted = _settings(corpus_file, tmp_path / "b", save_every=4)
    train_summary(LM, interrupted, progress=False)
    root = tmp_path / "b" / "checkpoints"  # pretend the run died after step 4 (mid-refresh)
    for f in (root / "step_000008").iterdir():
        f.unlink()
    (root / "step_000008").rmdir()
    (root / "latest").write_text("step_000004\n")
    resumed = train_summary(LM, interrupted, resume=True, progress=False)
    a = load_file(tmp_path / "a" / "checkpoints" / "step_000008" / "model.safetensors")
    b = load_file(root / "step_000008" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_loss"] == straight["val_loss"]


def test_cli_trains_apollo_mini_and_shows_its_state_bytes(corpus_file, tmp_path, capsys):
    out = tmp_path / "mini"
    args = ["train", "lm", "--text", str(corpus_file), "--model", "gpt_micro", "--method",
            "apollo_mini", "--block_size", "16", "--batch_size", "4", "--num_training_steps",
            "4", "--warmup_steps", "1", "--eval_every", "4", "--eval_tokens", "256",
            "--apollo_scale", "64", "--output_dir", str(out), "--no_progress"]
    assert main([*args, "--rank", "4"]) == 2  # Mini's rank is 1: an explicit rank is refused
    assert "--rank 4 does not apply to apollo_mini" in capsys.readouterr().err
    assert not out.exists()
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["val_loss"])
    full = train_summary(LM, _settings(corpus_file, tmp_path / "full", method="full",
                                       num_training_steps=4, method_options={}),
                         progress=False)
    # Mini keeps two rank-1 moments per target: far less than full rank's two full copies
    assert summary["grad_optimizer_bytes"] < 0.7 * full["grad_optimizer_bytes"]


def test_compare_tables_both_variants_with_their_state_bytes(corpus_file, tmp_path):
    settings = _settings(corpus_file, tmp_path / "cmp", num_training_steps=3, eval_every=3)
    results = compare_and_render(LM, settings, ["full", "apollo", "apollo_mini"])
    entries = results["methods"]
    assert entries["apollo_mini"]["grad_optimizer_bytes"] \
        < entries["apollo"]["grad_optimizer_bytes"] < entries["full"]["grad_optimizer_bytes"]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert all(f"| {m} |" in report for m in ("full", "apollo", "apollo_mini"))
