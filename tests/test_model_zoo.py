"""Model zoo: transformers architectures beyond the presets x every method (peft style).

Each architecture is built from a tiny config (no download): hidden 32, 2 layers, rank 4.
Every case runs the same life cycle with the method's defaults (``target_modules=
"all-linear"``): the conversion keeps the outputs, a few optimizer steps train, the merge
gives a plain transformers model with the converted one's outputs, and both the plain
``save_pretrained``/``from_pretrained`` of the merged model and the project's own
``save_pretrained``/``load_pretrained`` round-trip.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_spectral import load_pretrained, make_method, save_pretrained
from sparse_spectral.linear import is_linear
from sparse_spectral.methods import LoRALinear
from sparse_spectral.methods.base import method_for_run
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.targeting import find_target_modules

transformers = pytest.importorskip("transformers")

RANK = 4
VOCAB = 64
STEPS = 4
# Small refresh intervals so that a few steps reach ReLoRA*'s merge, GaLore's projection
# refresh and SST's reselection; everything else is the method's default.
SCHEDULE = {"full": {}, "lora": {}, "relora": {"merge_interval": 2},
            "galore": {"update_proj_gap": 2}, "sst": {"iteration_interval": 2}}
METHODS = sorted(SCHEDULE)

_LLAMA_LIKE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=64)


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_LLAMA_LIKE))


def _mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(**_LLAMA_LIKE))


def _phi3():  # fused qkv_proj (32 + 2 * 16 = 64 outputs) and gate_up_proj (2 * 48)
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(**_LLAMA_LIKE, pad_token_id=0))


def _gemma():  # tied embeddings, embedding scaled by sqrt(hidden)
    return transformers.GemmaForCausalLM(transformers.GemmaConfig(**_LLAMA_LIKE, head_dim=8))


def _bert_mlm():  # the decoder is tied to the word embeddings (the output embedding)
    return transformers.BertForMaskedLM(transformers.BertConfig(**_BERT))


def _bert_cls():  # a 3-label head: smaller than the rank, so it must not be a target
    return transformers.BertForSequenceClassification(transformers.BertConfig(**_BERT,
                                                                              num_labels=3))


def _t5():  # reads self.wo.weight in its feed-forward; lm_head tied to the shared embedding
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0))


def _gpt2():  # Conv1D layers, tied lm_head
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))


ARCHS = {"qwen2": _qwen2, "mistral": _mistral, "phi3": _phi3, "gemma": _gemma,
         "bert-mlm": _bert_mlm, "bert-cls": _bert_cls, "t5": _t5, "gpt2": _gpt2}

# The one documented option a case needs beyond the defaults (none so far).
OPTIONS: dict[tuple[str, str], dict] = {}

# Linear layers that all-linear must leave dense: output embeddings and task heads.
HEADS = {"qwen2": {"lm_head"}, "mistral": {"lm_head"}, "phi3": {"lm_head"},
         "gemma": {"lm_head"}, "bert-mlm": {"cls.predictions.decoder"},
         "bert-cls": {"classifier"}, "t5": {"lm_head"}, "gpt2": {"lm_head"}}


def _build(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ARCHS[arch]().eval()


def _batch(arch: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (2, 10), generator=g)
    if arch == "bert-cls":
        return {"input_ids": ids, "labels": torch.randint(0, 3, (2,), generator=g)}
    if arch == "t5":
        return {"input_ids": ids, "labels": torch.randint(1, VOCAB, (2, 6), generator=g)}
    return {"input_ids": ids, "labels": ids}


def _logits(model: nn.Module, arch: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**_batch(arch, 99)).logits


def _method(name: str, arch: str):
    # method_for_run sets the rank only where the method has one (not full).
    return method_for_run(name, rank=RANK, **SCHEDULE[name], **OPTIONS.get((arch, name), {}))


def _train(model: nn.Module, method, arch: str) -> list[float]:
    opt = method.build_optimizer(model, lr=1e-2)
    model.train()
    losses = []
    for step in range(1, STEPS + 1):
        loss = model(**_batch(arch, step)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_step(step, opt)
        losses.append(loss.item())
    return losses


def _tied(model: nn.Module) -> bool:
    """Whether the output embedding shares the input embedding's tensor."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _target_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach().clone() for name in names}


archs = pytest.mark.parametrize("arch", sorted(ARCHS))
methods = pytest.mark.parametrize("name", METHODS)


@archs
def test_all_linear_leaves_heads_dense(arch):
    model = _build(arch)
    found = {name for name, _ in find_target_modules(model)}
    linear = {name for name, module in model.named_modules() if is_linear(module)}
    assert linear - found == HEADS[arch]


@archs
@methods
def test_conversion_keeps_outputs(name, arch):
    dense = _build(arch)
    reference = _logits(dense, arch)
    model = _method(name, arch).prepare(dense)
    torch.testing.assert_close(_logits(model, arch), reference, rtol=0, atol=1e-5)


@archs
@methods
def test_train_merge_and_round_trips(name, arch, tmp_path):
    model = _build(arch)
    tied = _tied(model)
    targets = [n for n, _ in find_target_modules(model)]
    before = _target_weights(model, targets)
    method = _method(name, arch)
    model = method.prepare(model)

    losses = _train(model, method, arch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert method.step == STEPS  # after_step saw every step

    model.eval()
    converted = _logits(model, arch)
    merged = method.merge(model)
    assert type(merged) is type(model)
    assert not any(isinstance(m, (SpectralLinear, LoRALinear)) for m in merged.modules())
    torch.testing.assert_close(_logits(merged, arch), converted, rtol=0, atol=1e-5)
    assert _tied(merged) == _tied(model) == tied
    after = _target_weights(merged, targets)
    assert all(is_linear(dict(merged.named_modules())[n]) for n in targets)
    changed = [n for n in targets if not torch.equal(after[n], before[n])]
    assert changed == targets  # every target layer trained

    # Plain transformers: the merged model loads without this package.
    merged.save_pretrained(tmp_path / "hf")
    reloaded = type(merged).from_pretrained(tmp_path / "hf").eval()
    assert _tied(reloaded) == tied
    assert torch.equal(_logits(reloaded, arch), _logits(merged, arch))

    # The project's own format: a converted model and its method, ready to resume.
    save_pretrained(model, method, tmp_path / "sst")
    loaded, loaded_method = load_pretrained(_build(arch, seed=1), tmp_path / "sst")
    assert loaded_method.state_dict() == method.state_dict()
    assert torch.equal(_logits(loaded.eval(), arch), converted)


def test_tied_embeddings_of_the_table():
    assert {arch for arch in ARCHS if _tied(_build(arch))} == {"bert-mlm", "gemma", "gpt2", "t5"}


@pytest.mark.parametrize("name", ["lora", "sst"])
def test_phi3_fused_projections_convert_whole(name):
    method = _method(name, "phi3")
    model = method.prepare(_build("phi3"))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    layer_type = SpectralLinear if name == "sst" else LoRALinear
    assert isinstance(attn.qkv_proj, layer_type) and isinstance(mlp.gate_up_proj, layer_type)
    # q (32) + k, v (2 x 2 heads x 8) outputs; gate and up (2 x 48).
    assert (attn.qkv_proj.out_features, mlp.gate_up_proj.out_features) == (64, 96)


@pytest.mark.parametrize("name", ["lora", "galore", "sst"])
def test_naming_a_head_smaller_than_the_rank_is_a_clear_error(name):
    method = make_method(name, rank=RANK, target_modules=["classifier"])
    with pytest.raises(ValueError, match=r"rank=4 is out of range for layer 'classifier' of "
                       r"shape \(m=3, n=32\): it must be in \[1, min\(m, n\) = 3\]"):
        method.prepare(_build("bert-cls"))


def test_a_head_may_be_named_explicitly():
    model = make_method("sst", rank=2, target_modules=["classifier"]).prepare(_build("bert-cls"))
    assert isinstance(model.classifier, SpectralLinear)
