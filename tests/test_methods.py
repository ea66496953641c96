"""The method life cycle (full, sst) on an MLP and tiny transformers models."""

from __future__ import annotations

import io
import math

import pytest
import torch
from conftest import HF_MODELS, TinyMLP, token_batch

from sparse_spectral import (
    SpectralLinear,
    format_trainable_parameters,
    load_pretrained,
    make_method,
    memory_report,
    method_from_state,
    prune_spectrum,
    save_pretrained,
)
from sparse_spectral.methods import available_methods


def _mlp(seed=0):
    torch.manual_seed(seed)
    return TinyMLP()


def _x(step):
    return torch.randn(6, 12, generator=torch.Generator().manual_seed(1000 + step))


def _train(model, method, opt, first, last):
    """Optimizer steps ``first..last`` on batches keyed by the step number."""
    for step in range(first, last + 1):
        model(_x(step)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step, opt)


def _sst(**kw):
    settings = dict(rank=2, iteration_interval=2, exclude_modules=["head"], seed=7)
    return make_method("sst", **(settings | kw))


# ------------------------------------------------------------------ registry and config
def test_registry_lists_full_and_sst():
    assert {"full", "sst"} <= set(available_methods())


@pytest.mark.parametrize("name, kwargs, message", [
    ("lorax", {}, r"unknown method 'lorax'; available: .*sst"),
    ("sst", {"rnak": 2}, r"no setting\(s\) \['rnak'\]"),
    ("sst", {"rank": 0}, r"rank=0 must be an int >= 1"),
    ("sst", {"rank": -3}, r"rank=-3 must be an int >= 1"),
    ("sst", {"iteration_interval": 0}, r"iteration_interval \(T3\)=0 must be an int >= 1"),
    ("sst", {"iterations_per_round": 0}, r"iterations_per_round \(T2\)=0"),
    ("sst", {"lam": 1.5}, r"lam=1.5 must be a number in \[0, 1\]"),
    ("sst", {"lam": -0.1}, r"lam=-0.1 must be a number in \[0, 1\]"),
    ("sst", {"sampler": "best"}, r"sampler='best' is unknown; allowed: weighted, uniform"),
])
def test_bad_settings_raise_clear_errors(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_method(name, **kwargs)


def test_rank_larger_than_a_layer_names_the_layer():
    with pytest.raises(ValueError, match=r"rank=9 .* layer 'proj' .* \[1, min\(m, n\) = 8\]"):
        make_method("sst", rank=9).prepare(_mlp())


def test_no_module_matched_names_the_pattern():
    with pytest.raises(ValueError, match="nothing_here"):
        make_method("sst", rank=2, target_modules=["nothing_here"]).prepare(_mlp())


# ------------------------------------------------------------------ conversion
def test_mlp_conversion_keeps_outputs_and_counts():
    dense = _mlp()
    x = _x(0)
    ref = dense(x)
    model = _sst(rank=3).prepare(dense)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    names = [n for n, m in model.named_modules() if isinstance(m, SpectralLinear)]
    assert names == ["blocks.0.fc", "blocks.1.fc", "proj"]
    # Trainable: r (m + n) + k per layer, plus biases and the dense head.
    expected = (3 * (16 + 12) + 12 + 16) + (3 * 32 + 16 + 16) + (3 * (8 + 16) + 8) + (8 * 5 + 5)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected
    line = format_trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    assert line == (f"trainable params: {expected:,d} || all params: {total:,d} || "
                    f"trainable%: {100 * expected / total:.4f}")


@pytest.mark.parametrize("arch", sorted(HF_MODELS))
def test_transformers_conversion_keeps_logits(arch):
    model = HF_MODELS[arch]().eval()
    ids = token_batch()
    ref = model(ids).logits
    method = make_method("sst", rank=4)
    model = method.prepare(model)
    layers = [m for m in model.modules() if isinstance(m, SpectralLinear)]
    assert len(layers) == {"llama": 14, "opt": 12, "gpt2": 8}[arch]
    assert not hasattr(model, "lm_head") or not isinstance(model.lm_head, SpectralLinear)
    torch.testing.assert_close(model(ids).logits, ref, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ training semantics
def test_no_full_size_gradients_or_optimizer_state():
    method = _sst(rank=2)
    model = method.prepare(_mlp())
    opt = method.build_optimizer(model, lr=1e-2)
    _train(model, method, opt, 1, 3)
    model(_x(9)).sum().backward()  # live gradients, as between backward and step
    for layer in (m for m in model.modules() if isinstance(m, SpectralLinear)):
        assert layer.U_frozen.grad is None and layer.Vh_frozen.grad is None
        assert layer.U_active.grad.shape == (layer.out_features, 2)
        assert layer.Vh_active.grad.shape == (2, layer.in_features)
        assert layer.U_frozen not in opt.state and layer.Vh_frozen not in opt.state
        for t in opt.state[layer.U_active].values():
            assert t.shape in {(layer.out_features, 2), (1, 2)}
    report = memory_report(model, opt)
    trainable_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert report.gradients == trainable_bytes
    # exp_avg + exp_avg_sq per trainable number, plus the step counters.
    assert 2 * trainable_bytes <= report.optimizer_state < 2 * trainable_bytes + 400


def test_schedule_swaps_every_T3_and_resvds_every_round():
    model = _mlp()
    method = _sst(rank=2, iteration_interval=3, iterations_per_round=2)
    model = method.prepare(model)
    opt = method.build_optimizer(model, lr=1e-2)
    layer = model.blocks[0]["fc"]
    seen, resvd_steps = [layer.idx.clone()], []
    original = layer.resvd_

    def spy(*a, **k):
        resvd_steps.append(method.step)
        return original(*a, **k)

    layer.resvd_ = spy
    for step in range(1, 13):
        _train(model, method, opt, step, step)
        seen.append(layer.idx.clone())
        assert (layer.s >= 0).all()
        torch.testing.assert_close(layer.U_active.norm(dim=0), torch.ones(2))
    changes = [i for i in range(1, 13) if not torch.equal(seen[i], seen[i - 1])]
    assert set(changes) <= {3, 6, 9, 12} and len(changes) >= 2
    assert resvd_steps == [6, 12]


def test_after_step_refuses_unfrozen_factors():
    method = _sst()
    model = method.prepare(_mlp())
    model.requires_grad_(True)
    with pytest.raises(RuntimeError, match="full-size gradients"):
        method.after_step(1, None)


def test_sst_training_reduces_loss():
    method = _sst(rank=2)
    model = method.prepare(_mlp())
    opt = method.build_optimizer(model, lr=3e-2)
    x = _x(0)
    first = model(x).pow(2).mean().item()
    for step in range(1, 21):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        method.after_step(step, opt)
    assert model(x).pow(2).mean().item() < 0.5 * first


def _first_updates(scale):
    """The change of ``(U_active, Vh_active, s)`` of the first layer in one step at lr 1e-2."""
    method = _sst(singular_value_lr_scale=scale)
    model = method.prepare(_mlp())
    layer = method.layers[0][1]
    before = [p.detach().clone() for p in (layer.U_active, layer.Vh_active, layer.s)]
    opt = method.build_optimizer(model, lr=1e-2)
    model(_x(0)).pow(2).mean().backward()
    opt.step()
    return opt, [p.detach() - b for p, b in zip((layer.U_active, layer.Vh_active, layer.s),
                                               before, strict=True)]


def test_singular_value_lr_scale_scales_only_the_singular_values():
    opt1, (dU1, dV1, ds1) = _first_updates(1.0)
    opt3, (dU3, dV3, ds3) = _first_updates(3.0)
    # 1.0 keeps the paper's single spectral group (checkpoints unchanged).
    assert [g["name"] for g in opt1.param_groups][-1] == "spectral"
    assert "singular_values" not in [g["name"] for g in opt1.param_groups]
    values = next(g for g in opt3.param_groups if g["name"] == "singular_values")
    assert values["lr"] == pytest.approx(3e-2) and values["lr_scale"] == 3.0
    assert values["slot_dims"] == [-1] * len(values["params"])
    torch.testing.assert_close(dU3, dU1, rtol=0, atol=0)
    torch.testing.assert_close(dV3, dV1, rtol=0, atol=0)
    assert ds1.abs().max() > 0
    torch.testing.assert_close(ds3, 3 * ds1, rtol=1e-5, atol=1e-9)


def test_singular_value_lr_scale_survives_the_schedule_and_a_resvd():
    method = _sst(singular_value_lr_scale=2.0)
    model = method.prepare(_mlp())
    opt = method.build_optimizer(model, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))
    rounds = method._rounds(method.layers[0][1]) * method.config.iteration_interval
    for step in range(1, rounds + 2):
        model(_x(step)).pow(2).mean().backward()
        opt.step()
        scheduler.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step, opt)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["singular_values"] == pytest.approx(2 * lrs["spectral"])
    layer = method.layers[0][1]  # layer 0 re-SVD'd at the round's end: s restarted since
    assert int(opt.state[layer.s]["step"].max()) < rounds
    assert (layer.s >= 0).all()


def test_a_state_saved_before_singular_value_lr_scale_existed_still_loads():
    method = _sst()
    method.prepare(_mlp())
    state = method.state_dict()
    del state["config"]["singular_value_lr_scale"]
    method.load_state_dict(state)
    assert method_from_state(state).config.singular_value_lr_scale == 1.0


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "3"])
def test_singular_value_lr_scale_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=r"singular_value_lr_scale=.*must be a finite number"):
        _sst(singular_value_lr_scale=bad)


def test_full_method_is_the_identity_life_cycle():
    method = make_method("full")
    model = _mlp()
    assert method.prepare(model) is model
    opt = method.build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"decay": 0.1, "no_decay": 0.0}
    merged = method.merge(model)
    assert merged is not model
    torch.testing.assert_close(merged(_x(0)), model(_x(0)))


# ------------------------------------------------------------------ merge, save, load, resume
@pytest.mark.parametrize("arch", ["mlp", *sorted(HF_MODELS)])
def test_merge_parity_after_training(arch):
    model = _mlp() if arch == "mlp" else HF_MODELS[arch]()
    method = make_method("sst", rank=2, iteration_interval=2, **(
        {"exclude_modules": ["head"]} if arch == "mlp" else {}))
    model = method.prepare(model).eval()
    opt = method.build_optimizer(model, lr=1e-2)
    inputs = _x(0) if arch == "mlp" else token_batch()

    def out(m):
        result = m(inputs)
        return result if torch.is_tensor(result) else result.logits

    for step in range(1, 4):
        out(model).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        method.after_step(step, opt)
    merged = method.merge(model)
    assert not any(isinstance(m, SpectralLinear) for m in merged.modules())
    assert any(isinstance(m, SpectralLinear) for m in model.modules())  # not in place
    torch.testing.assert_close(out(merged), out(model), rtol=0, atol=1e-5)


def test_merged_transformers_model_loads_without_this_package(tmp_path):
    from transformers import AutoModelForCausalLM

    method = make_method("sst", rank=2)
    model = method.prepare(HF_MODELS["gpt2"]()).eval()
    opt = method.build_optimizer(model, lr=1e-2)
    ids = token_batch()
    model(ids).logits.pow(2).mean().backward()
    opt.step()
    method.after_step(1, opt)
    method.merge(model).save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    method = _sst()
    model = method.prepare(_mlp())
    opt = method.build_optimizer(model, lr=1e-2)
    _train(model, method, opt, 1, 5)
    save_pretrained(model, method, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["method.json",
                                                                      "model.safetensors"]
    loaded, loaded_method = load_pretrained(_mlp(seed=1), tmp_path / "ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded_method.step == 5 and loaded_method.config == method.config
    torch.testing.assert_close(loaded(_x(0)), model(_x(0)), rtol=0, atol=0)


def test_load_refuses_a_foreign_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="method.json"):
        load_pretrained(_mlp(), tmp_path)


def test_method_state_checks_selection_consistency():
    method = _sst()
    method.prepare(_mlp())
    state = method.state_dict()
    other = _sst()
    other.prepare(_mlp(seed=3))
    first = next(iter(state["selections"]))
    state["selections"][first] = [i for i in range(16) if i not in
                                  state["selections"][first]][:2]
    with pytest.raises(ValueError, match="load the model's state_dict"):
        other.load_state_dict(state)


def _checkpoint(model, method, opt):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    return buffer, method.state_dict()


@pytest.mark.parametrize("sampler, value_scale", [
    ("weighted", 1.0), ("uniform", 1.0), ("sequential", 1.0), ("top-r", 1.0), ("weighted", 3.0)])
def test_exact_resume(sampler, value_scale):
    """k steps + save + reload in fresh objects + j steps == k + j straight steps."""
    k, j = 5, 9  # crosses several iterations (T3 = 2) and rounds (T2 = ceil(k / 2))
    method = _sst(sampler=sampler, singular_value_lr_scale=value_scale)
    model = method.prepare(_mlp())
    opt = method.build_optimizer(model, lr=1e-2)
    _train(model, method, opt, 1, k)
    buffer, method_state = _checkpoint(model, method, opt)
    _train(model, method, opt, k + 1, k + j)

    saved = torch.load(buffer, weights_only=True)
    resumed_method = method_from_state(method_state)
    resumed = resumed_method.prepare(_mlp(seed=5))
    resumed.load_state_dict(saved["model"])
    resumed_method.load_state_dict(method_state)
    resumed_opt = resumed_method.build_optimizer(resumed, lr=1e-2)
    resumed_opt.load_state_dict(saved["optimizer"])
    selections = []
    for step in range(k + 1, k + j + 1):
        _train(resumed, resumed_method, resumed_opt, step, step)
        selections.append([layer.idx.tolist() for _, layer in resumed_method.layers])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert selections[-1] == [layer.idx.tolist() for _, layer in method.layers]


def test_resumed_selections_match_uninterrupted_draws():
    """The sampler has no hidden state: draws depend only on (seed, layer, iteration)."""
    def run(interrupt_at):
        method = _sst()
        model = method.prepare(_mlp())
        opt = method.build_optimizer(model, lr=1e-2)
        history = []
        for step in range(1, 13):
            if step == interrupt_at:
                state = method.state_dict()
                method = method_from_state(state)
                method.attach(model)
                method.load_state_dict(state)
            _train(model, method, opt, step, step)
            history.append([layer.idx.tolist() for _, layer in method.layers])
        return history

    assert run(interrupt_at=None) == run(interrupt_at=5)


# ------------------------------------------------------------------ pruning
def test_pruning_keeps_top_triplets():
    method = _sst(rank=2)
    model = method.prepare(_mlp())
    x = _x(0)
    assert torch.allclose(prune_spectrum(model, 0.0)(x), model(x), atol=1e-5)
    pruned = prune_spectrum(model, 0.5)
    ranks = {n: m.rank for n, m in pruned.named_modules() if hasattr(m, "A")}
    assert ranks == {"blocks.0.fc": 6, "blocks.1.fc": 8, "proj": 4}
    layer = model.proj
    weight = layer.dense_weight()
    U, s, Vh = torch.linalg.svd(weight, full_matrices=False)
    best = (U[:, :4] * s[:4]) @ Vh[:4]
    got = pruned.proj.B @ pruned.proj.A
    torch.testing.assert_close(got, best, rtol=0, atol=1e-5)
    assert any(isinstance(m, SpectralLinear) for m in model.modules())  # not in place


def test_pruning_a_dense_model_and_bad_ratio():
    dense = _mlp()
    pruned = prune_spectrum(dense, 0.25, target_modules=["fc"])
    assert {n for n, m in pruned.named_modules() if hasattr(m, "A")} == {"blocks.0.fc",
                                                                          "blocks.1.fc"}
    assert pruned.blocks[0]["fc"].rank == math.ceil(0.75 * 12)
    for ratio in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"ratio={ratio} must be a number in \[0, 1\]"):
            prune_spectrum(dense, ratio)


def test_memory_report_counts_frozen_factors_as_weights():
    model = _mlp()
    dense_bytes = memory_report(model).weights
    converted = _sst(rank=2).prepare(_mlp())
    sst_bytes = memory_report(converted).weights
    # Honest accounting: U and Vh hold k (m + n) numbers, more than m n for these layers.
    assert sst_bytes > dense_bytes
