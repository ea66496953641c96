"""Tests for sparse_spectral.models.presets: shapes, counts, determinism, targeting."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from sparse_spectral.linear import is_linear  # noqa: E402
from sparse_spectral.models import (  # noqa: E402
    PRESETS,
    ModelPreset,
    block_linear_modules,
    build_lm,
    count_block_linear,
    describe_presets,
    get_preset,
    preset_parameter_count,
)
from sparse_spectral.targeting import find_target_modules  # noqa: E402

# Shapes of the published configurations, checked against their sources:
# jiaweizzhao/GaLore configs/llama_{60m,130m,350m,1b}.json, facebook/opt-{125m,350m,1.3b}
# config.json, karpathy/nanoGPT config/train_shakespeare_char.py.
# name: (family, hidden, layers, heads, ffn)
PUBLISHED = {
    "llama_60m": ("llama", 512, 8, 8, 1376),
    "llama_130m": ("llama", 768, 12, 12, 2048),
    "llama_350m": ("llama", 1024, 24, 16, 2736),
    "llama_1b": ("llama", 2048, 24, 32, 5461),
    "opt_125m": ("opt", 768, 12, 12, 3072),
    "opt_350m": ("opt", 1024, 24, 16, 4096),
    "opt_1.3b": ("opt", 2048, 24, 32, 8192),
    "gpt_shakespeare_char": ("gpt2", 384, 6, 6, 1536),
}

# Untied LLaMA-130M at vocab 32000: two 32000 x 768 embeddings (49,152,000) + 12 blocks of
# 4 * 768^2 attention + 3 * 768 * 2048 MLP + 2 * 768 norm (7,078,656 each) + a final norm.
LLAMA_130M_PARAMS = 2 * 32000 * 768 + 12 * (4 * 768**2 + 3 * 768 * 2048 + 2 * 768) + 768
# GaLore issue #67 reports llama_350m as "Total Params: 367.97M, GaLore enabled: 302.38M".
LLAMA_350M_PARAMS_M, LLAMA_350M_BLOCK_M = 367.97, 302.38

LINEAR_PER_BLOCK = {"llama": 7, "opt": 6, "gpt2": 4}
MICRO = ["llama_micro", "opt_micro", "gpt_micro"]
VOCAB, BLOCK = 97, 24


def blocks(model, family: str):
    """The transformer block list of a family's CausalLM."""
    return {"llama": lambda: model.model.layers, "opt": lambda: model.model.decoder.layers,
            "gpt2": lambda: model.transformer.h}[family]()


def block_shapes(model, family: str) -> tuple[int, int]:
    """``(hidden, ffn)`` read off the weights of the first block."""
    block = blocks(model, family)[0]
    if family == "llama":
        return block.mlp.up_proj.in_features, block.mlp.up_proj.out_features
    if family == "opt":
        return block.fc1.in_features, block.fc1.out_features
    return tuple(block.mlp.c_fc.weight.shape)  # Conv1D stores (in, out)


def meta_model(name: str, vocab: int = VOCAB):
    with torch.device("meta"):
        return build_lm(name, vocab_size=vocab, block_size=BLOCK)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta_with_its_shapes(name):
    preset = PRESETS[name]
    model = meta_model(name)
    assert next(model.parameters()).device.type == "meta"
    assert len(blocks(model, preset.family)) == preset.num_layers
    assert block_shapes(model, preset.family) == (preset.hidden_size, preset.ffn_size)
    assert model.config.num_attention_heads == preset.num_heads
    assert model.get_output_embeddings().weight.shape[0] == VOCAB
    assert count_block_linear(model) == LINEAR_PER_BLOCK[preset.family] * preset.num_layers


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_shapes(name):
    p = PRESETS[name]
    assert (p.family, p.hidden_size, p.num_layers, p.num_heads, p.ffn_size) == PUBLISHED[name]


def test_opt_350m_projects_512_wide_embeddings_and_is_post_ln():
    model = meta_model("opt_350m")
    decoder = model.model.decoder
    assert decoder.embed_tokens.weight.shape == (VOCAB, 512)
    assert (decoder.project_in.in_features, decoder.project_in.out_features) == (512, 1024)
    assert model.config.do_layer_norm_before is False


def test_llama_130m_parameter_count_untied():
    total, _ = preset_parameter_count("llama_130m", vocab_size=32000)
    assert total == LLAMA_130M_PARAMS == 134_105_856
    model = meta_model("llama_130m", vocab=32000)
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_llama_350m_counts_match_galore():
    total, block = preset_parameter_count("llama_350m", vocab_size=32000)
    assert round(total / 1e6, 2) == LLAMA_350M_PARAMS_M
    assert round(block / 1e6, 2) == LLAMA_350M_BLOCK_M


@pytest.mark.parametrize("name", ["opt_micro", "gpt_micro"])
def test_opt_and_gpt2_tie_embeddings(name):
    model = build_lm(name, vocab_size=VOCAB, block_size=BLOCK)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("name", MICRO)
def test_micro_forward_shape_and_config(name):
    model = build_lm(name, vocab_size=VOCAB, block_size=BLOCK)
    ids = torch.randint(0, VOCAB, (3, BLOCK), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=ids).logits
    assert logits.shape == (3, BLOCK, VOCAB)
    assert torch.isfinite(logits).all()
    config = model.config
    assert config.pad_token_id is None
    assert 0 <= config.bos_token_id < VOCAB and 0 <= config.eos_token_id < VOCAB


@pytest.mark.parametrize("name", MICRO)
def test_special_ids_fit_a_tiny_vocab(name):
    config = build_lm(name, vocab_size=2, block_size=4).config
    assert config.bos_token_id in (0, 1) and config.eos_token_id in (0, 1)


@pytest.mark.parametrize("name", MICRO)
def test_seed_determines_weights_and_leaves_global_rng_alone(name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_lm(name, vocab_size=VOCAB, block_size=BLOCK, seed=5)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG untouched
    b = build_lm(name, vocab_size=VOCAB, block_size=BLOCK, seed=5)
    c = build_lm(name, vocab_size=VOCAB, block_size=BLOCK, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_initializer_std_is_002():
    model = build_lm("llama_tiny", vocab_size=512, block_size=BLOCK)
    assert model.model.layers[0].mlp.up_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_dropout_zero_is_deterministic_in_train_mode_and_dropout_is_applied():
    model = build_lm("gpt_micro", vocab_size=VOCAB, block_size=BLOCK).train()
    ids = torch.zeros(1, 8, dtype=torch.long)
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    noisy = build_lm("gpt_micro", vocab_size=VOCAB, block_size=BLOCK, dropout=0.5)
    assert noisy.config.resid_pdrop == 0.5


@pytest.mark.parametrize("name", MICRO)
def test_max_positions_cover_block_size(name):
    model = build_lm(name, vocab_size=VOCAB, block_size=BLOCK)
    positions = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    assert positions >= BLOCK


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown model preset 'llama_7b'.*llama_130m"):
        build_lm("llama_7b", vocab_size=VOCAB, block_size=BLOCK)


@pytest.mark.parametrize("kwargs, text", [
    ({"vocab_size": 0, "block_size": BLOCK}, "vocab_size must be an integer >= 1, got 0"),
    ({"vocab_size": VOCAB, "block_size": -3}, "block_size must be an integer >= 1, got -3"),
    ({"vocab_size": VOCAB, "block_size": BLOCK, "dropout": 1.0}, "dropout"),
])
def test_bad_sizes_name_the_value(kwargs, text):
    with pytest.raises(ValueError, match=text):
        build_lm("gpt_micro", **kwargs)


def test_preset_objects_pass_through_and_are_validated():
    preset = ModelPreset("custom", "gpt2", 16, 1, 2, 64)
    assert get_preset(preset) is preset
    assert build_lm(preset, vocab_size=VOCAB, block_size=BLOCK).config.n_embd == 16
    with pytest.raises(ValueError, match="family"):
        ModelPreset("bad", "bert", 16, 1, 2, 64)
    with pytest.raises(ValueError, match="divide"):
        ModelPreset("bad", "gpt2", 16, 1, 3, 64)


@pytest.mark.parametrize("name", ["llama_micro", "opt_micro", "gpt_micro", "opt_350m"])
def test_all_linear_targets_the_block_linears_never_the_head(name):
    preset = PRESETS[name]
    model = meta_model(name) if name == "opt_350m" else build_lm(name, VOCAB, BLOCK)
    targets = find_target_modules(model, "all-linear")
    head = model.get_output_embeddings()
    assert all(module is not head for _, module in targets)
    in_blocks = block_linear_modules(model)
    assert len(in_blocks) == LINEAR_PER_BLOCK[preset.family] * preset.num_layers
    for i in range(preset.num_layers):
        per_layer = [n for n, _ in in_blocks if f".{i}." in f".{n}"]
        assert len(per_layer) == LINEAR_PER_BLOCK[preset.family], per_layer
    # All-linear also takes OPT-350M's project_in/project_out, which sit outside the blocks.
    in_names = {n for n, _ in in_blocks}
    outside = sorted(n.rsplit(".", 1)[-1] for n, _ in targets if n not in in_names)
    assert outside == (["project_in", "project_out"] if name == "opt_350m" else [])


def test_gpt2_targets_are_conv1d():
    from transformers.pytorch_utils import Conv1D

    targets = find_target_modules(build_lm("gpt_micro", VOCAB, BLOCK), "all-linear")
    assert len(targets) == 4 * 2 and all(isinstance(m, Conv1D) for _, m in targets)
    assert {n.rsplit(".", 1)[-1] for n, _ in targets} == {"c_attn", "c_proj", "c_fc"}


def test_block_linears_are_linear_modules():
    model = build_lm("opt_micro", VOCAB, BLOCK)
    leaves = {n.rsplit(".", 1)[-1] for n, m in block_linear_modules(model)}
    assert leaves == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert all(is_linear(m) for _, m in block_linear_modules(model))


def test_describe_presets_lists_every_preset():
    text = describe_presets()
    for name in PRESETS:
        assert f"| {name} |" in text
    assert "| llama_130m | llama | 12 | 768 | 12 | 2048 | 134.11M |" in text
