"""Tests for sparse_spectral.targeting (peft-style module selection)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from sparse_spectral.linear import linear_shape
from sparse_spectral.targeting import find_target_modules, replace_module

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


class Block(nn.Module):
    """A block with attention-like projections and a non-linear sibling."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.attn = nn.ModuleDict(
            {"q_proj": nn.Linear(dim, dim), "proj": nn.Linear(dim, dim)}
        )
        self.fc = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)


class TinyMLP(nn.Module):
    """Nested model: embed -> layers (ModuleList of Blocks) -> lm_head."""

    def __init__(self, dim: int = 8, vocab: int = 16, n_layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim) for _ in range(n_layers))
        self.lm_head = nn.Linear(dim, vocab, bias=False)


MLP_LINEARS = [
    f"layers.{i}.{leaf}"
    for i in range(2)
    for leaf in ("attn.q_proj", "attn.proj", "fc", "out")
]


@pytest.fixture
def mlp() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP()


def names(pairs: list[tuple[str, nn.Module]]) -> list[str]:
    return [name for name, _ in pairs]


# --------------------------------------------------------------------------
# Without transformers (the linear module kinds themselves: test_linear.py)
# --------------------------------------------------------------------------


def test_works_without_transformers_installed() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["transformers"] = None  # simulate "not installed"
        from torch import nn
        from sparse_spectral import linear, targeting
        model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        found = [n for n, _ in targeting.find_target_modules(model)]
        assert found == ["0", "2"], found
        assert linear.LINEAR_TYPES == (nn.Linear,), linear.LINEAR_TYPES
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_plain_use_does_not_import_transformers() -> None:
    code = textwrap.dedent(
        """
        import sys
        from torch import nn
        from sparse_spectral.linear import is_linear
        from sparse_spectral.targeting import find_target_modules
        model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        find_target_modules(model)
        is_linear(model[0])
        print("transformers" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------
# Regex targets
# --------------------------------------------------------------------------


def test_regex_full_match(mlp: TinyMLP) -> None:
    found = find_target_modules(mlp, r"layers\.\d+\.attn\.q_proj")
    assert names(found) == ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]
    assert found[0][1] is mlp.layers[0].attn["q_proj"]


def test_regex_partial_does_not_match(mlp: TinyMLP) -> None:
    # re.search would find "q_proj" inside every q_proj name; fullmatch must not.
    with pytest.raises(ValueError, match="no modules matched"):
        find_target_modules(mlp, "q_proj")
    with pytest.raises(ValueError, match="no modules matched"):
        find_target_modules(mlp, r"layers\.0\.f")  # a prefix of "layers.0.fc"
    assert names(find_target_modules(mlp, r".*\.q_proj")) == [
        "layers.0.attn.q_proj",
        "layers.1.attn.q_proj",
    ]


def test_regex_selects_specific_layer(mlp: TinyMLP) -> None:
    found = find_target_modules(mlp, r"layers\.1\.(fc|out)")
    assert names(found) == ["layers.1.fc", "layers.1.out"]


def test_invalid_regex(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError, match=r"layers\.\(") as info:
        find_target_modules(mlp, "layers.(")
    assert "regular expression" in str(info.value)


# --------------------------------------------------------------------------
# List (suffix) targets
# --------------------------------------------------------------------------


def test_suffix_list_matches_whole_components(mlp: TinyMLP) -> None:
    assert names(find_target_modules(mlp, ["q_proj"])) == [
        "layers.0.attn.q_proj",
        "layers.1.attn.q_proj",
    ]
    # "proj" must match only modules literally named "proj", not "q_proj".
    assert names(find_target_modules(mlp, ["proj"])) == [
        "layers.0.attn.proj",
        "layers.1.attn.proj",
    ]


def test_suffix_list_multi_component_and_exact_names(mlp: TinyMLP) -> None:
    assert names(find_target_modules(mlp, ["attn.proj"])) == [
        "layers.0.attn.proj",
        "layers.1.attn.proj",
    ]
    assert names(find_target_modules(mlp, ["layers.1.fc"])) == ["layers.1.fc"]
    assert names(find_target_modules(mlp, ["lm_head"])) == ["lm_head"]


@pytest.mark.parametrize("container", [list, tuple, set, frozenset])
def test_suffix_containers_keep_model_order(mlp: TinyMLP, container: type) -> None:
    found = find_target_modules(mlp, container(["out", "q_proj"]))
    assert names(found) == [
        "layers.0.attn.q_proj",
        "layers.0.out",
        "layers.1.attn.q_proj",
        "layers.1.out",
    ]


def test_suffix_is_not_regex(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError, match="no modules matched"):
        find_target_modules(mlp, [r".*q_proj"])


# --------------------------------------------------------------------------
# all-linear
# --------------------------------------------------------------------------


def test_all_linear_default_excludes_lm_head_by_name(mlp: TinyMLP) -> None:
    assert not hasattr(mlp, "get_output_embeddings")
    assert names(find_target_modules(mlp)) == MLP_LINEARS
    assert names(find_target_modules(mlp, "all-linear")) == MLP_LINEARS


def test_all_linear_uses_get_output_embeddings() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 9)
            self.lm_head = nn.Linear(4, 4)  # not the head here: must be kept

        def get_output_embeddings(self) -> nn.Module:
            return self.head

    assert names(find_target_modules(Custom())) == ["body", "lm_head"]


def test_all_linear_head_name_fallback_when_getter_returns_none() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.decoder = nn.ModuleDict({"lm_head": nn.Linear(4, 9)})

        def get_output_embeddings(self) -> None:
            return None

    assert names(find_target_modules(Custom())) == ["body"]


def test_all_linear_is_not_a_regex() -> None:
    model = nn.ModuleDict({"all-linear": nn.Linear(2, 2), "x": nn.Linear(2, 2)})
    assert names(find_target_modules(model, "all-linear")) == ["all-linear", "x"]
    # In a list it is an ordinary suffix entry.
    assert names(find_target_modules(model, ["all-linear"])) == ["all-linear"]


def tiny_llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(config)


def test_all_linear_llama() -> None:
    model = tiny_llama()
    found = find_target_modules(model, "all-linear")
    expected = [
        f"model.layers.{i}.{leaf}"
        for i in range(2)
        for leaf in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    assert sorted(names(found)) == sorted(expected)
    assert len(found) == 14
    assert "lm_head" not in names(found)
    assert all(module is not model.lm_head for _, module in found)
    # GQA: 2 kv heads x head_dim 8 = 16 outputs; MLP 32 -> 64 -> 32.
    shapes = dict((name, linear_shape(m)) for name, m in found)
    assert shapes["model.layers.0.self_attn.q_proj"] == (32, 32)
    assert shapes["model.layers.0.self_attn.k_proj"] == (16, 32)
    assert shapes["model.layers.0.mlp.up_proj"] == (64, 32)
    assert shapes["model.layers.1.mlp.down_proj"] == (32, 64)


def test_llama_list_and_exclude() -> None:
    model = tiny_llama()
    found = find_target_modules(
        model, ["q_proj", "v_proj"], exclude_modules=r"model\.layers\.0\..*"
    )
    assert names(found) == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]


def test_all_linear_gpt2_conv1d() -> None:
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32
    )
    model = transformers.GPT2LMHeadModel(config)
    found = find_target_modules(model, "all-linear")
    expected = [
        f"transformer.h.{i}.{leaf}"
        for i in range(2)
        for leaf in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert sorted(names(found)) == sorted(expected)
    assert "lm_head" not in names(found)
    assert all(isinstance(module, Conv1D) for _, module in found)

    shapes = dict((name, linear_shape(m)) for name, m in found)
    assert shapes["transformer.h.0.attn.c_attn"] == (96, 32)  # fused q, k, v
    assert shapes["transformer.h.0.attn.c_proj"] == (32, 32)
    assert shapes["transformer.h.0.mlp.c_fc"] == (128, 32)  # 4 * n_embd
    assert shapes["transformer.h.1.mlp.c_proj"] == (32, 128)

    # Suffix lists distinguish attn.c_proj from mlp.c_proj.
    assert names(find_target_modules(model, ["mlp.c_proj"])) == [
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_proj",
    ]


def test_all_linear_opt() -> None:
    config = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        word_embed_proj_dim=32,
    )
    model = transformers.OPTForCausalLM(config)
    found = find_target_modules(model, "all-linear")
    expected = [
        f"model.decoder.layers.{i}.{leaf}"
        for i in range(2)
        for leaf in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
        )
    ]
    assert sorted(names(found)) == sorted(expected)
    assert "lm_head" not in names(found)
    shapes = dict((name, linear_shape(m)) for name, m in found)
    assert shapes["model.decoder.layers.0.fc1"] == (64, 32)
    assert shapes["model.decoder.layers.0.fc2"] == (32, 64)


_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
             intermediate_size=48, max_position_embeddings=32)
_DECODER = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)

# Task models x the linear layers all-linear leaves dense (output embedding, task heads).
HEAD_CASES = {
    "bert-seq-cls": (lambda: transformers.BertForSequenceClassification(
        transformers.BertConfig(**_BERT, num_labels=3)), {"classifier"}),
    "bert-token-cls": (lambda: transformers.BertForTokenClassification(
        transformers.BertConfig(**_BERT, num_labels=5)), {"classifier"}),
    "bert-qa": (lambda: transformers.BertForQuestionAnswering(
        transformers.BertConfig(**_BERT)), {"qa_outputs"}),
    "bert-mlm": (lambda: transformers.BertForMaskedLM(
        transformers.BertConfig(**_BERT)), {"cls.predictions.decoder"}),
    "roberta-seq-cls": (lambda: transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**_BERT, num_labels=3)),
        {"classifier.dense", "classifier.out_proj"}),  # a head module: all of it
    "qwen2-seq-cls": (lambda: transformers.Qwen2ForSequenceClassification(
        transformers.Qwen2Config(**_DECODER, num_labels=3)), {"score"}),
    "llama-seq-cls": (lambda: transformers.LlamaForSequenceClassification(
        transformers.LlamaConfig(**_DECODER, num_labels=3)), {"score"}),
    "t5-lm": (lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=4)),
        {"lm_head"}),
}


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_all_linear_leaves_output_embedding_and_task_heads(case: str) -> None:
    build, heads = HEAD_CASES[case]
    model = build()
    found = set(names(find_target_modules(model)))
    linear = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    assert linear - found == heads
    # The backbone stays a target: BERT's pooler and MLM transform included (as in peft).
    if case == "bert-seq-cls":  # (token classification and QA build BERT without a pooler)
        assert "bert.pooler.dense" in found
    if case == "bert-mlm":
        assert "cls.predictions.transform.dense" in found


def test_task_heads_go_by_name_at_any_depth_without_a_getter() -> None:
    model = nn.ModuleDict({"backbone": nn.Linear(4, 4),
                           "task": nn.ModuleDict({"classifier": nn.Linear(4, 3),
                                                  "score": nn.Linear(4, 1)}),
                           "scores": nn.Linear(4, 4)})  # a whole component only
    assert names(find_target_modules(model)) == ["backbone", "scores"]


def test_explicit_targets_may_name_a_head() -> None:
    model = HEAD_CASES["bert-seq-cls"][0]()
    assert names(find_target_modules(model, ["classifier"])) == ["classifier"]
    assert names(find_target_modules(model, r"(classifier|bert\.pooler\.dense)")) == [
        "bert.pooler.dense", "classifier"]


# --------------------------------------------------------------------------
# exclude_modules
# --------------------------------------------------------------------------


def test_exclude_list(mlp: TinyMLP) -> None:
    found = find_target_modules(mlp, "all-linear", exclude_modules=["out", "attn.proj"])
    assert names(found) == [
        "layers.0.attn.q_proj",
        "layers.0.fc",
        "layers.1.attn.q_proj",
        "layers.1.fc",
    ]


def test_exclude_regex(mlp: TinyMLP) -> None:
    found = find_target_modules(mlp, ["fc", "out"], exclude_modules=r"layers\.0\..*")
    assert names(found) == ["layers.1.fc", "layers.1.out"]


def test_exclude_suffix_is_component_wise(mlp: TinyMLP) -> None:
    # Excluding "proj" must keep "q_proj".
    found = find_target_modules(mlp, ["q_proj", "proj"], exclude_modules=["proj"])
    assert names(found) == ["layers.0.attn.q_proj", "layers.1.attn.q_proj"]


def test_exclude_can_drop_non_linear_match(mlp: TinyMLP) -> None:
    # Excluded modules are not targets, so they cannot trigger the non-linear error.
    found = find_target_modules(mlp, r"layers\.0\.(fc|act)", exclude_modules=["act"])
    assert names(found) == ["layers.0.fc"]


def test_exclude_everything_raises(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError, match="no modules matched") as info:
        find_target_modules(mlp, ["fc"], exclude_modules=["fc"])
    assert "exclude_modules=['fc']" in str(info.value)


def test_exclude_all_linear_rejected(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError, match="all-linear"):
        find_target_modules(mlp, exclude_modules="all-linear")


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_no_match_message_names_pattern_and_lists_linears(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError) as info:
        find_target_modules(mlp, ["k_proj"])
    message = str(info.value)
    assert "['k_proj']" in message
    for name in MLP_LINEARS + ["lm_head"]:
        assert name in message


def test_no_match_message_truncates_long_lists() -> None:
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(30)))
    with pytest.raises(ValueError) as info:
        find_target_modules(model, "nothing")
    message = str(info.value)
    assert "'nothing'" in message
    assert "19" in message and "20, " not in message  # names 0..19 shown only
    assert "10 more" in message


def test_no_match_without_linear_modules() -> None:
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(3))
    with pytest.raises(ValueError, match="no linear modules"):
        find_target_modules(model)


def test_non_linear_match_raises(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError, match=r"'layers\.0\.norm'.*LayerNorm"):
        find_target_modules(mlp, ["norm"])
    with pytest.raises(ValueError, match=r"'layers\.0\.attn'.*ModuleDict"):
        find_target_modules(mlp, r"layers\.\d+\.attn.*")


def test_llama_container_match_raises() -> None:
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp.*LlamaMLP"):
        find_target_modules(tiny_llama(), ["mlp"])


def test_root_module_is_never_a_target(mlp: TinyMLP) -> None:
    # ".*" also fully matches the root's empty name; the root is skipped, but
    # the non-linear submodules still make the pattern over-match.
    with pytest.raises(ValueError, match="'embed'.*Embedding"):
        find_target_modules(mlp, ".*")
    linear_root = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no modules matched"):
        find_target_modules(linear_root)


@pytest.mark.parametrize("bad", [None, 3, 1.5, b"fc", {"fc": 1}])
def test_bad_target_type(mlp: TinyMLP, bad: object) -> None:
    with pytest.raises(TypeError, match="target_modules") as info:
        find_target_modules(mlp, bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "list/tuple/set of str" in message


def test_bad_list_entry(mlp: TinyMLP) -> None:
    with pytest.raises(TypeError, match=r"non-str entries \[1\]"):
        find_target_modules(mlp, ["fc", 1])


@pytest.mark.parametrize("bad", [3, ["fc", None]])
def test_bad_exclude_type(mlp: TinyMLP, bad: object) -> None:
    with pytest.raises(TypeError, match="exclude_modules"):
        find_target_modules(mlp, exclude_modules=bad)


def test_invalid_exclude_regex(mlp: TinyMLP) -> None:
    with pytest.raises(ValueError, match=r"exclude_modules='\['"):
        find_target_modules(mlp, exclude_modules="[")


# --------------------------------------------------------------------------
# replace_module
# --------------------------------------------------------------------------


def test_replace_module_nested_modulelist(mlp: TinyMLP) -> None:
    new = nn.Linear(8, 16)
    replace_module(mlp, "layers.1.fc", new)
    assert mlp.layers[1].fc is new
    assert mlp.get_submodule("layers.1.fc") is new
    assert mlp.layers[0].fc is not new


def test_replace_module_in_moduledict_and_top_level(mlp: TinyMLP) -> None:
    q_new = nn.Identity()
    replace_module(mlp, "layers.0.attn.q_proj", q_new)
    assert mlp.layers[0].attn["q_proj"] is q_new
    head = nn.Linear(8, 16)
    replace_module(mlp, "lm_head", head)
    assert mlp.lm_head is head


def test_replace_module_whole_list_element(mlp: TinyMLP) -> None:
    block = Block()
    replace_module(mlp, "layers.0", block)
    assert mlp.layers[0] is block
    assert dict(mlp.named_modules())["layers.0.fc"] is block.fc


def test_replace_found_targets_roundtrip(mlp: TinyMLP) -> None:
    originals = dict(find_target_modules(mlp, ["fc"]))
    for name, module in originals.items():
        replace_module(mlp, name, nn.Linear(*reversed(linear_shape(module))))
    replaced = find_target_modules(mlp, ["fc"])
    assert all(m is not originals[name] for name, m in replaced)
    assert [linear_shape(m) for _, m in replaced] == [(16, 8), (16, 8)]
    h = mlp.embed(torch.randint(0, 16, (3,)))
    assert mlp.layers[1].fc(h).shape == (3, 16)


@pytest.mark.parametrize(
    "path", ["layers.5.fc", "layers.0.nope", "missing", "layers.0.fc.extra", ""]
)
def test_replace_module_missing_path(mlp: TinyMLP, path: str) -> None:
    with pytest.raises(KeyError) as info:
        replace_module(mlp, path, nn.Identity())
    assert repr(path) in str(info.value)


def test_replace_module_does_not_treat_parameters_as_modules(mlp: TinyMLP) -> None:
    with pytest.raises(KeyError, match="weight"):
        replace_module(mlp, "layers.0.fc.weight", nn.Identity())
    assert isinstance(mlp.layers[0].fc.weight, nn.Parameter)


def test_replace_module_requires_module(mlp: TinyMLP) -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        replace_module(mlp, "layers.0.fc", torch.zeros(2))
    assert isinstance(mlp.layers[0].fc, nn.Linear)
