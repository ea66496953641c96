"""The translation Transformer: attention against torch's reference, masks, targets by name."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparse_spectral.methods import make_method
from sparse_spectral.models.transformer import (
    MultiHeadAttention,
    TransformerConfig,
    TranslationTransformer,
    inner_linear_names,
    sinusoidal_positions,
)
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.targeting import find_target_modules

PAD = 0


def build(layers: int = 2, d: int = 32, dropout: float = 0.0, **kw) -> TranslationTransformer:
    torch.manual_seed(0)
    return TranslationTransformer(TransformerConfig(
        vocab_size=40, pad_id=PAD, d_model=d, num_heads=4, num_encoder_layers=layers,
        num_decoder_layers=layers, dropout=dropout, **kw))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 40, (3, 7), generator=g)
    src[1, 5:] = PAD
    src[2, 2:] = PAD
    tgt = torch.randint(3, 40, (3, 6), generator=g)
    return src, tgt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_matches_torch_multihead_attention(dtype):
    torch.manual_seed(1)
    ours = MultiHeadAttention(16, 4).to(dtype).eval()
    ref = nn.MultiheadAttention(16, 4, batch_first=True).to(dtype).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight,
                                            ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(torch.randn(16, dtype=dtype))
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    q, kv = torch.randn(2, 5, 16, dtype=dtype), torch.randn(2, 7, 16, dtype=dtype)
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[1, 4:] = False
    expected, _ = ref(q, kv, kv, key_padding_mask=~keep)
    got = ours(q, kv, keep[:, None, None, :])
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_shapes_and_tied_head():
    model = build().eval()
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 6, 40)
    assert model.generator.weight is model.decoder.embed.weight
    assert build(tie_embeddings=False).generator.weight is not \
        build(tie_embeddings=False).decoder.embed.weight


def test_decoder_is_causal():
    model = build().eval()
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, 4:] = 5
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_padding_does_not_change_real_positions():
    model = build().eval()
    src, tgt = batch()
    alone = model(src[2:3, :2], tgt[2:3])
    torch.testing.assert_close(model(src, tgt)[2:3], alone, atol=1e-5, rtol=1e-5)


def test_sinusoidal_table():
    table = sinusoidal_positions(10, 8)
    pos, i = 7, 2
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-6)


def test_inner_linears_by_name_and_all_linear_targets():
    model = build(layers=2)
    names = inner_linear_names(model)
    attn = ["q_proj", "k_proj", "v_proj", "out_proj"]
    expected = []
    for i in range(2):
        expected += [f"encoder.layers.{i}.self_attn.{p}" for p in attn]
        expected += [f"encoder.layers.{i}.ffn.fc1", f"encoder.layers.{i}.ffn.fc2"]
    for i in range(2):
        expected += [f"decoder.layers.{i}.self_attn.{p}" for p in attn]
        expected += [f"decoder.layers.{i}.cross_attn.{p}" for p in attn]
        expected += [f"decoder.layers.{i}.ffn.fc1", f"decoder.layers.{i}.ffn.fc2"]
    assert names == expected
    assert [n for n, _ in find_target_modules(model, "all-linear")] == expected
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


@pytest.mark.parametrize("method", ["lora", "relora", "sst"])
def test_methods_replace_every_inner_linear_and_keep_the_function(method):
    model = build(layers=1).eval()
    src, tgt = batch()
    before = model(src, tgt)
    names = inner_linear_names(model)
    m = make_method(method, rank=4)
    model = m.prepare(model)
    assert [n for n, _ in m.layers] == names
    assert isinstance(model.generator, nn.Linear)  # the head stays dense
    assert isinstance(model.encoder.embed, nn.Embedding)
    if method == "sst":
        assert all(isinstance(layer, SpectralLinear) for _, layer in m.layers)
    torch.testing.assert_close(model(src, tgt), before, atol=1e-5, rtol=1e-4)
    model(src, tgt).sum().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("decoder.layers.0.cross_attn.q_proj") for n in grads)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="num_heads=3 must divide d_model=32"):
        TransformerConfig(vocab_size=40, pad_id=0, d_model=32, num_heads=3)
    with pytest.raises(ValueError, match="pad_id=40"):
        TransformerConfig(vocab_size=40, pad_id=40)
    model = build()
    with pytest.raises(ValueError, match="exceeds max_positions=256"):
        model(torch.ones(1, 300, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
