"""Language-model presets: transformers causal LMs built from a config, never downloaded.

Each :class:`ModelPreset` names a shape (width, depth, heads, feed-forward size) of one of
three families, and :func:`build_lm` turns it into a randomly initialised transformers model:

* ``llama`` -> ``LlamaForCausalLM``: the GaLore / ReLoRA pre-training sizes (60M, 130M,
  350M, 1B; ``configs/llama_*.json`` in jiaweizzhao/GaLore), SiLU gated MLP, RMSNorm with
  eps 1e-6, no grouped-query attention and **untied** input/output embeddings, as there.
* ``opt`` -> ``OPTForCausalLM``: facebook/opt-125m, -350m (post-LayerNorm, with 512-wide
  word embeddings projected in and out of the 1024-wide blocks) and -1.3b; tied embeddings.
* ``gpt2`` -> ``GPT2LMHeadModel``: nanoGPT's Shakespeare-char "baby GPT" and smaller CPU
  shapes; ``Conv1D`` projections and tied embeddings as in GPT-2.

Deviations from the originals, on purpose:

* Dropout is 0 unless the caller passes ``dropout``: a run without dropout consumes no
  random numbers in the forward pass, so resuming from a checkpoint is exact.
  :attr:`ModelPreset.reference_dropout` records what the original used (0.2 for nanoGPT's
  Shakespeare-char, 0.1 for OPT) for callers who want it.
* Positions: ``max_position_embeddings`` (``n_positions``) is exactly ``block_size``, so the
  learned position tables of OPT and GPT-2 are no larger than needed.
* No padding token (``pad_token_id=None``): pre-training uses full fixed-length blocks, and a
  padding id would freeze that token's embedding row (``nn.Embedding(padding_idx=...)`` gets
  no gradient), which hurts small character vocabularies. GaLore's ``pad_token_id=-1``
  would silently freeze the last token instead. BOS/EOS keep the originals' ids when they
  fit in the vocabulary and fall back to ``vocab_size - 1`` otherwise.
* ``use_cache=False``: training forwards need no key/value cache (``generate`` can still
  ask for one).

Example::

    from sparse_spectral.models import build_lm, describe_presets
    model = build_lm("llama_micro", vocab_size=64, block_size=32, seed=0)
    logits = model(input_ids=torch.zeros(2, 8, dtype=torch.long)).logits   # (2, 8, 64)
    print(describe_presets())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..accounting import count_parameters
from ..linear import is_linear
from .meta_init import record_init

__all__ = [
    "FAMILIES",
    "ModelPreset",
    "PRESETS",
    "block_linear_modules",
    "build_lm",
    "count_block_linear",
    "describe_presets",
    "get_preset",
    "preset_parameter_count",
]

FAMILIES = ("llama", "opt", "gpt2")

_GALORE = "jiaweizzhao/GaLore configs/{}.json"
_OPT_HUB = "facebook/{} config.json"
_NANOGPT = "karpathy/nanoGPT config/train_shakespeare_char.py"

# The originals' special-token ids (GaLore's LLaMA configs, OPT, GPT-2).
_BOS_EOS = {"llama": (0, 1), "opt": (2, 2), "gpt2": (50256, 50256)}


@dataclass(frozen=True)
class ModelPreset:
    """The shape of a causal language model.

    Attributes:
        name: Key in :data:`PRESETS`.
        family: ``"llama"``, ``"opt"`` or ``"gpt2"``.
        hidden_size: Width ``d`` of the residual stream.
        num_layers: Number of transformer blocks.
        num_heads: Attention heads per block (must divide ``hidden_size``).
        ffn_size: Inner width of the feed-forward network.
        word_embed_proj_dim: OPT only: width of the token embeddings when it differs from
            ``hidden_size`` (opt-350m: 512, projected in and out by two linear layers).
        do_layer_norm_before: OPT only: pre-LayerNorm (True) or post-LayerNorm (opt-350m).
        reference_dropout: Dropout the original configuration used; :func:`build_lm` applies
            it only when asked to (``dropout=preset.reference_dropout``).
        description: One line for :func:`describe_presets`.
        source: Where the shape comes from.
    """

    name: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    word_embed_proj_dim: int | None = None
    do_layer_norm_before: bool = True
    reference_dropout: float = 0.0
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"preset {self.name!r}: family {self.family!r} is not one of "
                             f"{', '.join(FAMILIES)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"preset {self.name!r}: num_heads={self.num_heads} does not "
                             f"divide hidden_size={self.hidden_size}")
        if self.family != "opt" and (self.word_embed_proj_dim is not None
                                     or not self.do_layer_norm_before):
            raise ValueError(f"preset {self.name!r}: word_embed_proj_dim and "
                             "do_layer_norm_before are OPT options")


def _llama(name: str, d: int, ffn: int, heads: int, layers: int, description: str,
           source: str = "") -> ModelPreset:
    return ModelPreset(name, "llama", d, layers, heads, ffn, description=description,
                       source=source or _GALORE.format(name))


def _opt(name: str, d: int, layers: int, heads: int, ffn: int, description: str,
         source: str = "", **extras: Any) -> ModelPreset:
    return ModelPreset(name, "opt", d, layers, heads, ffn, reference_dropout=0.1,
                       description=description, source=source, **extras)


def _gpt(name: str, d: int, layers: int, heads: int, description: str, source: str = "",
         reference_dropout: float = 0.0) -> ModelPreset:
    return ModelPreset(name, "gpt2", d, layers, heads, 4 * d,
                       reference_dropout=reference_dropout, description=description,
                       source=source)


_PRESET_LIST = (
    _llama("llama_60m", 512, 1376, 8, 8, "GaLore/ReLoRA LLaMA 60M"),
    _llama("llama_130m", 768, 2048, 12, 12, "GaLore/ReLoRA LLaMA 130M (SST paper)"),
    _llama("llama_350m", 1024, 2736, 16, 24, "GaLore/ReLoRA LLaMA 350M"),
    _llama("llama_1b", 2048, 5461, 32, 24, "GaLore LLaMA 1B (1.34B params; SST's 1.3B)"),
    _llama("llama_tiny", 128, 344, 4, 4, "CPU-sized LLaMA", source="this project"),
    _llama("llama_replica", 96, 256, 4, 4, "LLaMA-130M scaled for 2 CPU cores (benchmarks/"
           "lm_replica.py): with a 1,344-token vocabulary 63% of it is block linear, as in "
           "LLaMA-130M", source="this project"),
    _llama("llama_micro", 32, 86, 4, 2, "LLaMA for unit tests", source="this project"),
    _opt("opt_125m", 768, 12, 12, 3072, "OPT-125M (SST paper)", _OPT_HUB.format("opt-125m")),
    _opt("opt_350m", 1024, 24, 16, 4096, "OPT-350M: post-LN, 512-wide embeddings",
         _OPT_HUB.format("opt-350m"), word_embed_proj_dim=512, do_layer_norm_before=False),
    _opt("opt_1.3b", 2048, 24, 32, 8192, "OPT-1.3B", _OPT_HUB.format("opt-1.3b")),
    _opt("opt_tiny", 128, 4, 4, 512, "CPU-sized OPT", "this project"),
    _opt("opt_micro", 32, 2, 4, 128, "OPT for unit tests", "this project"),
    _gpt("gpt_shakespeare_char", 384, 6, 6, "nanoGPT Shakespeare-char baby GPT",
         _NANOGPT, reference_dropout=0.2),
    _gpt("gpt_cpu", 128, 4, 4, "CPU-sized GPT-2", "this project"),
    _gpt("gpt_micro", 32, 2, 2, "GPT-2 for unit tests", "this project"),
)

PRESETS: dict[str, ModelPreset] = {preset.name: preset for preset in _PRESET_LIST}


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------


def get_preset(preset: str | ModelPreset) -> ModelPreset:
    """Resolve a preset name (or pass a :class:`ModelPreset` through).

    Raises:
        ValueError: If the name is not in :data:`PRESETS`; the message lists them.
    """
    if isinstance(preset, ModelPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; available: {', '.join(PRESETS)}")
    return PRESETS[preset]


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _bos_eos(family: str, vocab_size: int) -> dict[str, Any]:
    """Special ids of the original, moved to ``vocab_size - 1`` when they do not fit."""
    bos, eos = (i if i < vocab_size else vocab_size - 1 for i in _BOS_EOS[family])
    return {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None}


def _llama_model(p: ModelPreset, vocab_size: int, block_size: int, dropout: float) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=p.hidden_size, intermediate_size=p.ffn_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_heads, max_position_embeddings=block_size,
        hidden_act="silu", rms_norm_eps=1e-6, initializer_range=0.02,
        attention_dropout=dropout,  # LLaMA has no residual dropout
        tie_word_embeddings=False, use_cache=False, **_bos_eos("llama", vocab_size))
    return LlamaForCausalLM(config)


def _opt_model(p: ModelPreset, vocab_size: int, block_size: int, dropout: float) -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=vocab_size, hidden_size=p.hidden_size, ffn_dim=p.ffn_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
        max_position_embeddings=block_size,
        word_embed_proj_dim=p.word_embed_proj_dim or p.hidden_size,
        do_layer_norm_before=p.do_layer_norm_before, activation_function="relu",
        dropout=dropout, attention_dropout=dropout, init_std=0.02,
        tie_word_embeddings=True, use_cache=False, **_bos_eos("opt", vocab_size))
    return OPTForCausalLM(config)


def _gpt2_model(p: ModelPreset, vocab_size: int, block_size: int, dropout: float) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size, n_positions=block_size, n_embd=p.hidden_size,
        n_layer=p.num_layers, n_head=p.num_heads, n_inner=p.ffn_size,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        initializer_range=0.02, tie_word_embeddings=True, use_cache=False,
        **_bos_eos("gpt2", vocab_size))
    model = GPT2LMHeadModel(config)
    # The class name does not say "ForCausalLM", so transformers would warn that the loss
    # is unknown on the first forward with labels; it is the causal-LM loss it then uses.
    model.loss_type = "ForCausalLM"
    return model


_BUILDERS = {"llama": _llama_model, "opt": _opt_model, "gpt2": _gpt2_model}


def build_lm(preset: str | ModelPreset, vocab_size: int, block_size: int, seed: int = 0,
             dropout: float = 0.0, device: str | torch.device | None = None) -> nn.Module:
    """Build a randomly initialised transformers causal LM from a preset.

    Weights are drawn from ``N(0, 0.02^2)`` (transformers' initialisation for the family)
    with the global CPU generator seeded to ``seed`` inside :func:`torch.random.fork_rng`,
    so the same seed gives the same weights and the caller's global RNG state is exactly
    as it was before the call. Call it under ``with torch.device("meta"):`` to get shapes
    and parameter counts without allocating memory (how :func:`describe_presets` sizes
    ``llama_1b``).

    ``device="meta"`` also builds on the meta device, but records every initialisation
    call and the generator state before it (:mod:`.meta_init`), drawing and discarding
    each random tensor once (the CPU time of a dense build, one tensor of memory at a
    time): :func:`~sparse_spectral.models.materialize.materialize` then reproduces the
    dense build bit for bit, layer by layer, without a dense copy of the model.

    Args:
        preset: A name from :data:`PRESETS` or a :class:`ModelPreset`.
        vocab_size: Number of token ids ``V``.
        block_size: Longest sequence ``T`` the model must accept (its position limit).
        seed: Seed of the initialisation.
        dropout: Dropout probability for attention and residual paths (LLaMA: attention
            only); 0 keeps the forward pass free of randomness.
        device: None (CPU, dense) or ``"meta"`` (recorded, see above).

    Returns:
        ``LlamaForCausalLM``, ``OPTForCausalLM`` or ``GPT2LMHeadModel`` in train mode,
        mapping ``input_ids`` ``(B, T)`` to ``logits`` ``(B, T, V)``.

    Raises:
        ValueError: For an unknown preset, ``vocab_size`` or ``block_size`` below 1, or
            ``dropout`` outside ``[0, 1)``, or a ``device`` other than None, ``"cpu"`` and
            ``"meta"`` (materialise to other devices with ``materialize``).
    """
    spec = get_preset(preset)
    _check_positive("vocab_size", vocab_size)
    _check_positive("block_size", block_size)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    kind = None if device is None else torch.device(device).type
    if kind not in (None, "cpu", "meta"):
        raise ValueError(f"device={device!r} is not supported; allowed: None, 'cpu', 'meta' "
                         "(build on 'meta', then materialize(model, method, device=...))")
    if kind == "meta":
        with record_init(seed) as finish:
            return finish(_BUILDERS[spec.family](spec, vocab_size, block_size, float(dropout)))
    # devices=[]: only the CPU generator is used for initialisation; leave CUDA alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[spec.family](spec, vocab_size, block_size, float(dropout))


# --------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------


def block_linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear layers inside the transformer blocks: the layers SST replaces.

    A block is an entry of a ``ModuleList``, so a linear module counts when its dotted name
    has an integer component (``model.layers.3.mlp.up_proj``, ``transformer.h.0.attn.c_attn``).
    Embeddings, the output head, norms and OPT-350M's ``project_in``/``project_out`` are
    outside the blocks.

    Args:
        model: An unconverted model (a method's replacement layers are not linear modules).

    Returns:
        ``(name, module)`` pairs in ``named_modules()`` order.
    """
    return [(name, module) for name, module in model.named_modules()
            if is_linear(module) and any(part.isdigit() for part in name.split("."))]


def count_block_linear(model: nn.Module) -> int:
    """Number of linear layers inside the blocks; see :func:`block_linear_modules`.

    7 per LLaMA block (q, k, v, o, gate, up, down), 6 per OPT block (q, k, v, out_proj,
    fc1, fc2) and 4 ``Conv1D`` per GPT-2 block (c_attn, attn c_proj, c_fc, mlp c_proj).
    """
    return len(block_linear_modules(model))


def preset_parameter_count(preset: str | ModelPreset, vocab_size: int,
                           block_size: int = 1024) -> tuple[int, int]:
    """``(total, in block linear layers)`` parameter counts, measured on the meta device.

    Tied embeddings count once. Nothing is allocated, so ``llama_1b`` costs milliseconds.
    """
    with torch.device("meta"):
        model = build_lm(preset, vocab_size=vocab_size, block_size=block_size)
    _, total = count_parameters(model)
    block = sum(p.numel() for _, module in block_linear_modules(model)
                for p in module.parameters())
    return total, block


def _millions(count: int) -> str:
    return f"{count / 1e6:,.2f}M"


def describe_presets(vocab_size: int = 32000, block_size: int = 1024) -> str:
    """A Markdown table of the presets (what ``sst models`` prints).

    Args:
        vocab_size: Vocabulary the parameter counts assume (LLaMA's tokenizer: 32000).
        block_size: Context length the counts assume (matters for OPT/GPT-2 positions).

    Returns:
        Columns: name, family, layers, width, heads, ffn, params, block linear params,
        description.
    """
    lines = [
        f"Model presets (parameters at vocab {vocab_size:,d}, context {block_size}; "
        "tied embeddings counted once)",
        "",
        "| name | family | layers | width | heads | ffn | params | block linear params "
        "| description |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in PRESETS.values():
        total, block = preset_parameter_count(p, vocab_size, block_size)
        lines.append(f"| {p.name} | {p.family} | {p.num_layers} | {p.hidden_size} | "
                     f"{p.num_heads} | {p.ffn_size} | {_millions(total)} | "
                     f"{_millions(block)} | {p.description} |")
    return "\n".join(lines)
