"""A Euclidean encoder-decoder Transformer (Vaswani et al. 2017) made of plain ``nn.Linear`` maps.

Choices (fixed, documented here):

* **Pre-norm** residual blocks, ``x + Dropout(Sublayer(LayerNorm(x)))``, with a final
  LayerNorm after the last encoder and decoder block (fairseq's ``--*-normalize-before``);
  pre-norm trains stably at small width without a long learning-rate warm-up.
* **Sinusoidal positions** (not learned), added to embeddings scaled by ``sqrt(d_model)``;
  embeddings start ``N(0, d_model^-1/2)`` as in fairseq.
* Attention is written out with explicit ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``
  ``nn.Linear`` layers (``nn.MultiheadAttention`` keeps ``in_proj`` as a raw parameter and
  ``out_proj`` as a ``NonDynamicallyQuantizableLinear``), so a training method can replace
  every inner map by name. The feed-forward block is ``fc2(Dropout(ReLU(fc1(x))))`` with
  ``d_ff = 4 d_model`` by default. Inner linears start Xavier-uniform with zero bias.
* The output projection ``generator`` (``d_model -> vocab``, no bias) shares its weight with
  the target embedding when ``tie_embeddings`` (Press & Wolf 2017). It is the model's output
  head (:meth:`get_output_embeddings`), so ``target_modules="all-linear"`` selects exactly
  the inner linears of the encoder and decoder, and embeddings and head stay dense.

Inner linear maps by name (per layer ``l``)::

    encoder.layers.{l}.self_attn.{q,k,v,out}_proj       d x d
    encoder.layers.{l}.ffn.fc1 / fc2                    d_ff x d / d x d_ff
    decoder.layers.{l}.self_attn.{q,k,v,out}_proj       d x d
    decoder.layers.{l}.cross_attn.{q,k,v,out}_proj      d x d
    decoder.layers.{l}.ffn.fc1 / fc2                    d_ff x d / d x d_ff

Interface used by training and decoding (the hyperbolic model offers the same)::

    memory, src_mask = model.encode(src)                  # (B, S, d), (B, S) bool
    logits = model.decode(tgt_in, memory, src_mask)        # (B, T, V)
    logits = model(src, tgt_in)                            # both at once

and, optionally, incremental decoding with cached keys and values (decoding uses it when a
model has it, and re-runs ``decode`` over the prefix otherwise)::

    state = model.start_decoding(memory, src_mask)
    logits = model.decode_step(tokens[:, -1:], state)      # (N, V); state advances
    state = state.select(rows)                             # beam reordering
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the translation Transformer.

    Attributes:
        vocab_size: joint vocabulary size (source and target share the id space).
        pad_id: padding id (its embedding row stays zero and gets no gradient).
        d_model: width ``d``.
        num_heads: attention heads (must divide ``d_model``).
        num_encoder_layers: encoder blocks.
        num_decoder_layers: decoder blocks.
        d_ff: feed-forward width; ``None`` means ``4 * d_model``.
        dropout: after attention and feed-forward sublayers, on attention weights, inside the
            feed-forward block and on the embedded input.
        max_positions: longest sequence the position table covers.
        tie_embeddings: share the target embedding and the output projection.
    """

    vocab_size: int
    pad_id: int
    d_model: int = 64
    num_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int | None = None
    dropout: float = 0.1
    max_positions: int = 256
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "num_encoder_layers",
                     "num_decoder_layers", "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        if self.d_ff is not None and (not isinstance(self.d_ff, int) or self.d_ff < 1):
            raise ValueError(f"d_ff={self.d_ff!r} must be None (4 * d_model) or an int >= 1")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be in [0, vocab_size={self.vocab_size})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


def _linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """The ``(length, d_model)`` table: sin on even, cos on odd channels (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                          * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``num_heads`` heads with four ``nn.Linear`` maps.

    Args:
        d_model: model width ``d``.
        num_heads: heads ``H`` (``d_h = d / H``).
        dropout: dropout on the attention weights (training only).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = _linear(d_model, d_model)
        self.k_proj = _linear(d_model, d_model)
        self.v_proj = _linear(d_model, d_model)
        self.out_proj = _linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, H, T, d_h)
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Attend from ``query`` to ``key_value``.

        Args:
            query: ``(B, Tq, d)``.
            key_value: ``(B, Tk, d)``.
            mask: bool, broadcastable to ``(B, H, Tq, Tk)``; True where attending is allowed.
                Every query row must allow at least one key.

        Returns:
            ``(B, Tq, d)``.
        """
        return self.attend(query, *self.keys_values(key_value), mask)

    def keys_values(self, key_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values ``(B, H, Tk, d_h)`` each (cached while decoding)."""
        return self._heads(self.k_proj(key_value)), self._heads(self.v_proj(key_value))

    def attend(self, query: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of ``query`` ``(B, Tq, d)`` over projected ``k``, ``v``; ``(B, Tq, d)``."""
        q = self._heads(self.q_proj(query))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        b, h, t, dh = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(b, t, h * dh))


class FeedForward(nn.Module):
    """``fc2(Dropout(ReLU(fc1(x))))``: ``(..., d) -> (..., d)``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1 = _linear(d_model, d_ff)
        self.fc2 = _linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention and feed-forward blocks."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, S, d)``; ``mask``: ``(B, 1, 1, S)`` key padding. Returns ``(B, S, d)``."""
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, h, mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, cross-attention and feed-forward blocks."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_dim, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, causal: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        """``y``: ``(B, T, d)``; ``memory``: ``(B, S, d)``; masks ``(1, 1, T, T)`` and
        ``(B, 1, 1, S)``. Returns ``(B, T, d)``."""
        h = self.self_attn_norm(y)
        y = y + self.dropout(self.self_attn(h, h, causal))
        y = y + self.dropout(self.cross_attn(self.cross_attn_norm(y), memory, memory_mask))
        return y + self.dropout(self.ffn(self.ffn_norm(y)))

    def step(self, y: torch.Tensor, cache: dict[str, torch.Tensor],
             memory_mask: torch.Tensor) -> torch.Tensor:
        """One new position ``y`` ``(N, 1, d)`` given the cached keys/values; updates ``cache``.

        ``cache`` holds ``k``/``v`` (self-attention, ``(N, H, t, d_h)``, grown here) and
        ``memory_k``/``memory_v`` (cross-attention, fixed). Equals :meth:`forward` at the
        last position (earlier positions never attend to later ones) in eval mode; no
        dropout is applied here.
        """
        h = self.self_attn_norm(y)
        k, v = self.self_attn.keys_values(h)
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        y = y + self.self_attn.attend(h, k, v, None)
        y = y + self.cross_attn.attend(self.cross_attn_norm(y), cache["memory_k"],
                                       cache["memory_v"], memory_mask)
        return y + self.ffn(self.ffn_norm(y))


class _Stack(nn.Module):
    """Token embedding, positions, a list of layers and a final LayerNorm."""

    def __init__(self, cfg: TransformerConfig, layer_type: type[nn.Module], count: int):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed.weight, std=cfg.d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()
        self.layers = nn.ModuleList(layer_type(cfg) for _ in range(count))
        self.final_norm = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.scale = math.sqrt(cfg.d_model)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, cfg.d_model),
                             persistent=False)

    def embed_tokens(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``(B, T)`` ids at positions ``start ..`` -> ``(B, T, d)``."""
        end = start + ids.shape[1]
        if end > self.positions.shape[0]:
            raise ValueError(f"sequence of {end} tokens exceeds max_positions="
                             f"{self.positions.shape[0]}")
        return self.dropout(self.embed(ids) * self.scale + self.positions[start:end])


class Encoder(_Stack):
    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, EncoderLayer, cfg.num_encoder_layers)

    def forward(self, src: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(src)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


@dataclass
class DecoderState:
    """What incremental decoding keeps between steps (see ``start_decoding``).

    Attributes:
        memory_mask: ``(N, 1, 1, S)`` source padding mask.
        caches: per decoder layer, ``memory_k``/``memory_v`` and the growing ``k``/``v``.
        length: positions decoded so far.
    """

    memory_mask: torch.Tensor
    caches: list[dict[str, torch.Tensor]]
    length: int = 0

    def select(self, rows: torch.Tensor, same_source: bool = False) -> DecoderState:
        """The state of hypotheses ``rows`` (beam reordering, dropping finished ones).

        ``same_source``: every ``rows[i]`` decodes the same source sentence as row ``i``
        (beam reordering within a sentence), so the source-side caches are kept as they are.
        """
        def pick(key: str, value: torch.Tensor) -> torch.Tensor:
            return value if same_source and key.startswith("memory") else value[rows]

        return DecoderState(self.memory_mask if same_source else self.memory_mask[rows],
                            [{k: pick(k, v) for k, v in c.items()} for c in self.caches],
                            self.length)


class Decoder(_Stack):
    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, DecoderLayer, cfg.num_decoder_layers)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        t = tgt.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt.device).tril()[None, None]
        y = self.embed_tokens(tgt)
        for layer in self.layers:
            y = layer(y, memory, causal, memory_mask)
        return self.final_norm(y)

    def step(self, token: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Hidden state ``(N, 1, d)`` of the next position for input ``token`` ``(N, 1)``."""
        y = self.embed_tokens(token, start=state.length)
        for layer, cache in zip(self.layers, state.caches):
            y = layer.step(y, cache, state.memory_mask)
        state.length += 1
        return self.final_norm(y)


class EncoderDecoder(nn.Module):
    """The translation interface both Transformers share: ``encode``, ``decode``, ``forward``.

    Subclasses set ``config`` (with ``pad_id``), ``encoder(src, mask)``,
    ``decoder(tgt, memory, mask)`` and ``generator(y)``; ``mask`` is ``(B, 1, 1, S)`` bool.
    """

    #: The methods besides ``forward`` that decoding calls on the model: FSDP2 must run its
    #: gather hooks around them (:func:`~..training.fsdp.shard_model`). None of them calls
    #: another (``forward`` uses the private ``_encode``/``_decode``), so hooks never nest.
    forward_methods = ("encode", "decode", "start_decoding", "decode_step")

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode source ids.

        Args:
            src: ``(B, S)`` int64, right-padded with ``pad_id``.

        Returns:
            ``memory`` ``(B, S, d)`` (vectors, or points on the hyperboloid) and
            ``src_mask`` ``(B, S)`` bool (True at real tokens).
        """
        return self._encode(src)

    def _encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src_mask = src.ne(self.config.pad_id)
        return self.encoder(src, src_mask[:, None, None, :]), src_mask

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               last_only: bool = False) -> torch.Tensor:
        """Next-token logits.

        Args:
            tgt: ``(B, T)`` decoder input ids (``<bos>`` first).
            memory: ``(B, S, d)`` from :meth:`encode`.
            src_mask: ``(B, S)`` bool from :meth:`encode`.
            last_only: project only the last position (decoding).

        Returns:
            ``(B, T, V)`` logits, or ``(B, 1, V)`` with ``last_only``.
        """
        return self._decode(tgt, memory, src_mask, last_only)

    def _decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:
        y = self.decoder(tgt, memory, src_mask[:, None, None, :])
        return self.generator(y[:, -1:] if last_only else y)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)``: source ``(B, S)``, decoder input ``(B, T)``."""
        memory, src_mask = self._encode(src)
        return self._decode(tgt, memory, src_mask)


class TranslationTransformer(EncoderDecoder):
    """Encoder-decoder Transformer for translation over one joint vocabulary.

    Args:
        config: the shape; see :class:`TransformerConfig`.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.generator = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.generator.weight = self.decoder.embed.weight
        else:
            nn.init.normal_(self.generator.weight, std=config.d_model ** -0.5)

    def get_output_embeddings(self) -> nn.Linear:
        """The output head (kept dense by ``target_modules="all-linear"``)."""
        return self.generator

    @torch.no_grad()
    def start_decoding(self, memory: torch.Tensor, src_mask: torch.Tensor) -> DecoderState:
        """Incremental decoding: cache each layer's cross-attention keys and values once."""
        caches = []
        for layer in self.decoder.layers:
            k, v = layer.cross_attn.keys_values(memory)
            caches.append({"memory_k": k, "memory_v": v})
        return DecoderState(src_mask[:, None, None, :], caches)

    @torch.no_grad()
    def decode_step(self, token: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Logits ``(N, V)`` after feeding ``token`` ``(N, 1)``; ``state`` advances one position.

        Feeding ``<bos>, y_1, ..., y_t`` one at a time gives the logits of :meth:`decode` at
        each position (up to rounding) at a cost linear, not quadratic, in the length.
        """
        return self.generator(self.decoder.step(token, state))[:, -1]

def inner_linear_names(model: TranslationTransformer) -> list[str]:
    """Dotted names of every ``nn.Linear`` inside the encoder and decoder (not the head)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not model.generator]
