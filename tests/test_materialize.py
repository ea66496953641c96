"""Meta-device builds materialised layer by layer (``materialize``, ``build_lm(device="meta")``).

Recorded builds must reproduce the dense build plus ``prepare`` bit for bit; plain meta
builds (``with torch.device("meta")``) get the model's own init: checked by its statistics.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from sparse_spectral import SpectralLinear, make_method, materialize
from sparse_spectral.linear import is_linear
from sparse_spectral.methods.lora import LoRALinear
from sparse_spectral.models import build_lm
from sparse_spectral.models.meta_init import init_record

V, T = 64, 16
METHODS = {"sst": {"rank": 4}, "lora": {"rank": 4}, "relora": {"rank": 4},
           "galore": {"rank": 4}, "full": {}}


def _meta(preset: str, seed: int = 5) -> nn.Module:
    return build_lm(preset, V, T, seed=seed, device="meta")


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())  # non-persistent ones too
    assert ba.keys() == bb.keys()
    for key in ba:
        assert torch.equal(ba[key], bb[key]), key


@pytest.mark.parametrize("preset", ["llama_micro", "gpt_micro", "opt_micro"])
@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("prepared_on_meta", [False, True])
def test_recorded_build_reproduces_dense_prepare_exactly(preset, name, prepared_on_meta):
    dense = make_method(name, **METHODS[name]).prepare(build_lm(preset, V, T, seed=5))
    model, method = _meta(preset), make_method(name, **METHODS[name])
    if prepared_on_meta:
        model = method.prepare(model)
    model = materialize(model, method)
    _assert_same_state(dense, model)
    ids = torch.randint(0, V, (2, 8), generator=torch.Generator().manual_seed(1))
    assert torch.equal(dense(input_ids=ids).logits, model(input_ids=ids).logits)
    if name in ("sst", "lora", "relora"):
        assert [n for n, _ in method.layers] == [n for n, _ in method.converted_layers(model)]


@pytest.mark.parametrize("preset", ["gpt_micro", "opt_micro"])
def test_tied_embeddings_stay_one_tensor(preset):
    model = materialize(_meta(preset), make_method("sst", rank=4))
    assert model.lm_head.weight is model.get_input_embeddings().weight


def test_global_rng_is_untouched():
    state = torch.get_rng_state()
    model = _meta("llama_micro")
    materialize(model, make_method("lora", rank=4))
    assert torch.equal(state, torch.get_rng_state())


def test_record_marks_what_it_cannot_replay():
    record = init_record(_meta("llama_micro"))
    assert record.seed == 5
    # Rotary frequencies are copied from a meta tensor: left to transformers' _init_weights.
    assert not record.replayable("model.rotary_emb.inv_freq")
    assert record.replayable("model.layers.0.mlp.up_proj.weight")
    assert record.draws("model.layers.0.mlp.up_proj.weight")
    assert not record.draws("model.norm.weight")  # ones_
    assert init_record(build_lm("llama_micro", V, T)) is None


def test_at_most_one_block_is_dense_at_a_time():
    model = _meta("llama_tiny")
    method = make_method("sst", rank=4)
    seen, dense_weights, alive = [], [], []
    convert = method.convert_layer

    def counting(index, module):
        seen.append(sum(1 for _, m in model.named_modules()
                        if is_linear(m) and not m.weight.is_meta and m is not model.lm_head))
        dense_weights.append(weakref.ref(module.weight))
        alive.append(sum(ref() is not None for ref in dense_weights))
        return convert(index, module)

    method.convert_layer = counting
    materialize(model, method)
    assert len(seen) == 4 * 7
    assert max(seen) <= 7  # one LLaMA block's seven projections, never more
    assert max(alive) <= 7  # converted blocks' dense weights are freed, not kept anywhere


# --------------------------------------------------------------------- own init (no record)
def _plain_meta(preset: str) -> nn.Module:
    with torch.device("meta"):
        return build_lm(preset, V, T)


def test_plain_meta_build_gets_the_models_distribution():
    model = materialize(_plain_meta("llama_tiny"), make_method("sst", rank=8), seed=3)
    layers = [m for m in model.modules() if isinstance(m, SpectralLinear)]
    assert len(layers) == 4 * 7
    weights = torch.cat([layer.dense_weight().flatten() for layer in layers])
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)  # initializer_range
    assert abs(weights.mean().item()) < 1e-4
    for layer in layers:
        U, s, Vh = layer.effective_factors()
        eye = torch.eye(layer.k)
        torch.testing.assert_close(U.t() @ U, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(Vh @ Vh.t(), eye, atol=1e-5, rtol=0)
        assert torch.all(s[:-1] >= s[1:]) and torch.all(s >= 0)
        perm = torch.cat([layer.idx, layer.frozen_idx]).sort().values
        assert torch.equal(perm, torch.arange(layer.k))
        x = torch.randn(5, layer.in_features)
        torch.testing.assert_close(layer(x), x @ ((U * s) @ Vh).t(), atol=1e-5, rtol=1e-4)
    embed = model.get_input_embeddings().weight
    assert embed.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    dense = build_lm("llama_tiny", V, T)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, dense.model.rotary_emb.inv_freq)
    # Same seed, same values; another seed, other values.
    again = materialize(_plain_meta("llama_tiny"), make_method("sst", rank=8), seed=3)
    _assert_same_state(model, again)
    other = materialize(_plain_meta("llama_tiny"), make_method("sst", rank=8), seed=4)
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_plain_meta_build_applies_gpt2_residual_scaling():
    """GPT-2's attention/MLP init rescales its child c_proj: it must run before conversion."""
    model = materialize(_plain_meta("gpt_micro"), make_method("sst", rank=4), seed=0)
    stds = {}
    for name, module in model.named_modules():
        if isinstance(module, SpectralLinear):
            kind = name.split(".")[-1]
            stds.setdefault(kind, []).append(module.dense_weight().flatten())
    n_layer = 2
    c_proj = torch.cat(stds["c_proj"]).std().item()
    c_attn = torch.cat(stds["c_attn"] + stds["c_fc"]).std().item()
    assert c_proj == pytest.approx(0.02 / (2 * n_layer) ** 0.5, rel=0.1)
    assert c_attn == pytest.approx(0.02, rel=0.1)


def test_plain_meta_lora_keeps_methods_init():
    model = materialize(_plain_meta("llama_tiny"), make_method("lora", rank=8), seed=0)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert layers and all(torch.count_nonzero(layer.lora_B) == 0 for layer in layers)
    a = torch.cat([layer.lora_A.flatten() for layer in layers])
    assert a.std().item() == pytest.approx(1 / 8, rel=0.05)
    base = torch.cat([layer.base.weight.flatten() for layer in layers])
    assert base.std().item() == pytest.approx(0.02, rel=0.02)
    assert not any(layer.base.weight.requires_grad for layer in layers)


# --------------------------------------------------------------------- training after it
def test_materialised_sst_trains_resvds_and_merges():
    method = make_method("sst", rank=4, iteration_interval=2, iterations_per_round=1,
                         stagger_resvd=False)
    model = materialize(_meta("llama_micro"), method)
    optimizer = method.build_optimizer(model, lr=1e-2)
    ids = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(1, 7):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(step, optimizer)  # re-SVD and a new selection every 2 steps
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    merged = method.merge(model)
    assert not any(isinstance(m, SpectralLinear) for m in merged.modules())
    torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits,
                               atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------- bad input
def test_errors():
    with pytest.raises(ValueError, match="no tensor on the meta device"):
        materialize(build_lm("llama_micro", V, T), make_method("sst", rank=4))
    with pytest.raises(ValueError, match="device='meta'"):
        materialize(_meta("llama_micro"), make_method("sst", rank=4), device="meta")
    with pytest.raises(ValueError, match="seed=6 contradicts"):
        materialize(_meta("llama_micro"), make_method("sst", rank=4), seed=6)
    with pytest.raises(ValueError, match="device='cuda' is not supported"):
        build_lm("llama_micro", V, T, device="cuda")
    model = _meta("llama_micro")
    with pytest.raises(ValueError, match="rank=99 is out of range"):
        materialize(model, make_method("sst", rank=99))
    assert all(p.is_meta for p in model.parameters())  # checked before any allocation
