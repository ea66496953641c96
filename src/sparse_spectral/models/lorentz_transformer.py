"""HyboNet's Lorentz Transformer for translation (Chen et al. 2022, ``mt/``), as its code builds it.

Every activation between modules is a point of the hyperboloid ``H^{d-1}`` (ambient ``d``,
time first); inside attention each head is a point of ``H^{d/H-1}``. As the official model
(reference/hybonet.md sections 3.1-3.5):

* **Embeddings**: token points (a :class:`geoopt.ManifoldParameter` per side, HyboNet's
  ``random_normal``, no padding row: ``<pad>`` is an ordinary point that attention masks
  and the loss ignores; no ``sqrt(d)`` scaling) and a learned Euclidean position table
  ``N(0, 0.02^2)`` that enters as the residual of a ``d -> d`` LorentzLinear with its own
  input dropout (0.1 in the official code, whatever ``-dropout`` says):
  ``e_t = point(E[w_t], residual=P[t])``.
* **Attention**: Q/K/V LorentzLinears split into ``H`` head points (input dropout
  ``attention_dropout``), scores ``-d^2_L(q_i, k_j) / sigma + beta`` with one learnable
  ``sigma`` (init ``sqrt(d_model)``, not ``sqrt(d_h)``) and ``beta`` (init 0) shared by the
  heads, masked with ``-1e18``, softmax (no dropout on the weights), then the Lorentz
  centroid of the values per head. There is no output projection inside attention: the
  heads are merged by the LorentzLinear that also takes the residual (no bias).
* **Blocks**, no layer norm anywhere::

      encoder:  h1 = out_proj(attend(h, h), residual=h);  h' = fc2(relu(fc1(h1)), residual=h1)
      decoder:  g1 = self_attn(g, g) ...;  g2 = cross_attn(g1, memory) ...;  g' = ffn(g2)

  where the residual enters the LorentzLinear before its time/space normalisation
  (:class:`~..hyperbolic.layers.LorentzLinearMT`).
* **Output**: logits ``-d^2_L(g, D_v) + b_v`` to a separate manifold table ``D`` (a deep copy
  of the target embeddings at init, then trained on its own) plus a bias; log-softmax and
  NLL give HyboNet's loss.

Every ordinary linear map is a LorentzLinear's inner ``nn.Linear`` named ``linear``, so
``target_modules="all-linear"`` (there is no ``nn.Linear`` output head) and the suffix list
:data:`LORENTZ_TRANSFORMER_TARGETS` both select exactly the inner maps; the manifold tables
(``*.embed.weight``, ``generator.weight``) are never linear modules and no method touches
them. Train them with a Riemannian Adam
(:func:`~..hyperbolic.optim.build_hyperbolic_optimizer`). Names per layer ``l``::

    encoder.embed.point.linear                               d x d      (positions)
    encoder.layers.{l}.self_attn.{q,k,v}_proj.linear         d x d      (split into H heads)
    encoder.layers.{l}.self_attn.out_proj.linear             d x d      (merge + residual, no bias)
    encoder.layers.{l}.ffn.fc1.linear / ffn.fc2.linear       d_ff x d / d x d_ff (fc2: residual)
    decoder.embed.point.linear
    decoder.layers.{l}.{self_attn,cross_attn}.{q,k,v,out}_proj.linear
    decoder.layers.{l}.ffn.fc1.linear / ffn.fc2.linear

The interface is the Euclidean :class:`~.transformer.TranslationTransformer`'s, so the
translation task and :mod:`~..decoding` use either model unchanged::

    memory, src_mask = model.encode(src)                          # (B, S, d) points, (B, S)
    logits = model.decode(tgt_in, memory, src_mask, last_only)    # (B, T, V) or (B, 1, V)
    logits = model(src, tgt_in)

Settings where the official code and the paper differ are documented in
docs/hyperbolic_transformer.md; the defaults follow the code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import geoopt
import torch
from torch import nn
from torch.nn import functional as F

from ..hyperbolic.layers import RESIDUAL_MODES, LorentzLinearMT
from ..hyperbolic.lorentz import Lorentz, centroid, pairwise_sqdist, random_normal
from .transformer import EncoderDecoder

# Target spec for training methods: every LorentzLinearMT's inner nn.Linear (name suffix).
LORENTZ_TRANSFORMER_TARGETS = ["linear"]
# HyboNet's attention mask value (fp32).
MASK_VALUE = -1e18
# HyboNet's position table init: N(0, 0.02^2).
POSITION_STD = 0.02


@dataclass(frozen=True)
class LorentzTransformerConfig:
    """Shape and settings of the Lorentz Transformer.

    The shape fields and their defaults are those of the Euclidean
    :class:`~.transformer.TransformerConfig` (the official IWSLT'14 model is d 64, 4 heads,
    d_ff 256, 6 + 6 layers); the rest are HyboNet's settings, defaults as its code.

    Attributes:
        vocab_size: joint vocabulary size (separate source and target tables over it).
        pad_id: padding id (masked in attention; its points are ordinary parameters).
        d_model: ambient width ``d`` (time included).
        num_heads: heads ``H``; each head is a point of ``d / H >= 2`` coordinates.
        num_encoder_layers: encoder blocks.
        num_decoder_layers: decoder blocks.
        d_ff: feed-forward width; ``None`` means ``4 * d_model``.
        dropout: input dropout of the merge/residual and both feed-forward LorentzLinears
            (HyboNet's ``-dropout``; its IWSLT run uses 0).
        attention_dropout: input dropout of the Q/K/V LorentzLinears (IWSLT run: 0.1).
        position_dropout: input dropout of the positional LorentzLinear (hard-coded 0.1).
        max_positions: rows of the learned position tables (HyboNet: 5000; only rows below
            the longest sentence ever get a gradient).
        tie_embeddings: the output table is the target embedding table itself; HyboNet
            (False) deep-copies it at init and trains the copy separately.
        residual: ``"code"`` (the official LorentzLinear: residual added to the whole
            vector before the time sigmoid) or ``"paper"`` (Eq. 7: space part only).
        space_eps: floor of ``|y_s|^2`` in every LorentzLinear (official MT code: 0, none).
        attention_scale: initial ``sigma`` of the scores; None means ``sqrt(d_model)``.
        k: curvature parameter (HyboNet: 1).
    """

    vocab_size: int
    pad_id: int
    d_model: int = 64
    num_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int | None = None
    dropout: float = 0.0
    attention_dropout: float = 0.1
    position_dropout: float = 0.1
    max_positions: int = 256
    tie_embeddings: bool = False
    residual: str = "code"
    space_eps: float = 0.0
    attention_scale: float | None = None
    k: float = 1.0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_heads", "num_encoder_layers",
                     "num_decoder_layers", "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if self.d_model % self.num_heads or self.d_model // self.num_heads < 2:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model} "
                             "into head points of >= 2 coordinates (time plus space)")
        if self.d_ff is not None and (isinstance(self.d_ff, bool)
                                      or not isinstance(self.d_ff, int) or self.d_ff < 2):
            raise ValueError(f"d_ff={self.d_ff!r} must be None (4 * d_model) or an int >= 2")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be in [0, vocab_size={self.vocab_size})")
        for name in ("dropout", "attention_dropout", "position_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.residual not in RESIDUAL_MODES:
            raise ValueError(f"residual={self.residual!r} is unknown; allowed: "
                             f"{', '.join(RESIDUAL_MODES)}")
        if not self.space_eps >= 0:
            raise ValueError(f"space_eps={self.space_eps!r} must be >= 0")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ValueError(f"attention_scale={self.attention_scale!r} must be None or > 0")
        if isinstance(self.k, bool) or not isinstance(self.k, (int, float)) or not self.k > 0:
            raise ValueError(f"k={self.k!r} must be a number > 0")

    @property
    def ffn_dim(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def linear(self, d_in: int, d_out: int, **kwargs) -> LorentzLinearMT:
        """A LorentzLinearMT with this config's curvature, residual mode and floor."""
        return LorentzLinearMT(d_in, d_out, k=self.k, residual=self.residual,
                               space_eps=self.space_eps, **kwargs)


class LorentzMultiHeadAttention(nn.Module):
    """HyboNet's Lorentz attention, followed by the head-merging residual LorentzLinear.

    Args:
        cfg: the model config.

    Parameters: ``{q,k,v}_proj`` (split into heads, bias, input dropout
    ``attention_dropout``), ``out_proj`` (merge heads + residual, no bias, input dropout
    ``dropout``), ``scale`` sigma (1,) and ``bias`` beta (scalar), shared by the heads.
    """

    def __init__(self, cfg: LorentzTransformerConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.num_heads
        self.k = float(cfg.k)
        self.q_proj = cfg.linear(d, d, heads=h, dropout=cfg.attention_dropout)
        self.k_proj = cfg.linear(d, d, heads=h, dropout=cfg.attention_dropout)
        self.v_proj = cfg.linear(d, d, heads=h, dropout=cfg.attention_dropout)
        self.out_proj = cfg.linear(d, d, bias=False, heads=h, merge=True, dropout=cfg.dropout)
        sigma = cfg.attention_scale if cfg.attention_scale is not None else math.sqrt(d)
        self.scale = nn.Parameter(torch.tensor([float(sigma)]))
        self.bias = nn.Parameter(torch.zeros(()))

    def attend(self, query: torch.Tensor, key_value: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head centroids of the values and the attention weights.

        Args:
            query: ``(B, Tq, d)`` points.
            key_value: ``(B, Tk, d)`` points.
            mask: bool, broadcastable to ``(B, H, Tq, Tk)``; True where attending is allowed.

        Returns:
            ``context`` ``(B, Tq, H, d_h)`` (one point per head) and ``weights``
            ``(B, H, Tq, Tk)`` (rows sum to 1).
        """
        q = self.q_proj(query).transpose(1, 2)       # (B, H, Tq, d_h)
        k = self.k_proj(key_value).transpose(1, 2)   # (B, H, Tk, d_h)
        v = self.v_proj(key_value).transpose(1, 2)
        scores = -pairwise_sqdist(q, k, self.k) / self.scale + self.bias
        weights = scores.masked_fill(~mask, MASK_VALUE).softmax(dim=-1)
        return centroid(v, weights, self.k).transpose(1, 2), weights

    def forward(self, query: torch.Tensor, key_value: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``out_proj(attend(query, key_value), residual=query)``: ``(B, Tq, d)`` points."""
        context, _ = self.attend(query, key_value, mask)
        return self.out_proj(context, residual=query)


class LorentzFeedForward(nn.Module):
    """``fc2(relu(fc1(x)), residual=x)``: ``(..., d) -> (..., d)`` points.

    ReLU acts on every coordinate of ``fc1``'s point (its time >= 1.1 is unchanged); each
    LorentzLinear applies its own input dropout.
    """

    def __init__(self, cfg: LorentzTransformerConfig):
        super().__init__()
        self.fc1 = cfg.linear(cfg.d_model, cfg.ffn_dim, dropout=cfg.dropout)
        self.fc2 = cfg.linear(cfg.ffn_dim, cfg.d_model, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)), residual=x)


class LorentzEncoderLayer(nn.Module):
    """Self-attention (with its residual merge) then the feed-forward block; no norm."""

    def __init__(self, cfg: LorentzTransformerConfig):
        super().__init__()
        self.self_attn = LorentzMultiHeadAttention(cfg)
        self.ffn = LorentzFeedForward(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, S, d)`` points; ``mask``: ``(B, 1, 1, S)`` key padding."""
        return self.ffn(self.self_attn(x, x, mask))


class LorentzDecoderLayer(nn.Module):
    """Causal self-attention, cross-attention, feed-forward; each with its residual; no norm."""

    def __init__(self, cfg: LorentzTransformerConfig):
        super().__init__()
        self.self_attn = LorentzMultiHeadAttention(cfg)
        self.cross_attn = LorentzMultiHeadAttention(cfg)
        self.ffn = LorentzFeedForward(cfg)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        """``y``: ``(B, T, d)``; ``memory``: ``(B, S, d)``; masks ``(B, 1, T, T)`` (causal and
        target padding) and ``(B, 1, 1, S)``. Returns ``(B, T, d)`` points."""
        y = self.self_attn(y, y, self_mask)
        y = self.cross_attn(y, memory, memory_mask)
        return self.ffn(y)


class LorentzEmbedding(nn.Module):
    """Token points plus learned positions: ``point(E[ids], residual=positions[t])``.

    Parameters: ``weight`` (V, d) ManifoldParameter, ``positions`` (max_positions, d)
    Euclidean, ``point`` (a d -> d LorentzLinearMT with bias and ``position_dropout``).
    """

    def __init__(self, cfg: LorentzTransformerConfig, manifold: Lorentz):
        super().__init__()
        self.weight = geoopt.ManifoldParameter(
            random_normal(cfg.vocab_size, cfg.d_model, k=cfg.k), manifold=manifold)
        self.positions = nn.Parameter(torch.randn(cfg.max_positions, cfg.d_model) * POSITION_STD)
        self.point = cfg.linear(cfg.d_model, cfg.d_model, dropout=cfg.position_dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ids -> ``(B, T, d)`` points (positions ``0 .. T-1``)."""
        if ids.shape[1] > self.positions.shape[0]:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds max_positions="
                             f"{self.positions.shape[0]}")
        return self.point(self.weight[ids], residual=self.positions[: ids.shape[1]])


class LorentzEncoder(nn.Module):
    def __init__(self, cfg: LorentzTransformerConfig, manifold: Lorentz):
        super().__init__()
        self.embed = LorentzEmbedding(cfg, manifold)
        self.layers = nn.ModuleList(LorentzEncoderLayer(cfg)
                                    for _ in range(cfg.num_encoder_layers))

    def forward(self, src: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``src`` ``(B, S)``, ``mask`` ``(B, 1, 1, S)`` -> ``(B, S, d)`` points (last layer)."""
        x = self.embed(src)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class LorentzDecoder(nn.Module):
    def __init__(self, cfg: LorentzTransformerConfig, manifold: Lorentz):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.embed = LorentzEmbedding(cfg, manifold)
        self.layers = nn.ModuleList(LorentzDecoderLayer(cfg)
                                    for _ in range(cfg.num_decoder_layers))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor,
                memory_mask: torch.Tensor) -> torch.Tensor:
        """``tgt`` ``(B, T)``, ``memory`` ``(B, S, d)``, ``memory_mask`` ``(B, 1, 1, S)`` ->
        ``(B, T, d)`` points. Position ``t`` sees target positions ``<= t`` that are not
        padding (HyboNet's causal-or-padding mask)."""
        t = tgt.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt.device).tril()
        self_mask = causal[None, None] & tgt.ne(self.pad_id)[:, None, None, :]
        y = self.embed(tgt)
        for layer in self.layers:
            y = layer(y, memory, self_mask, memory_mask)
        return y


class LorentzDistanceGenerator(nn.Module):
    """Logits ``-d^2_L(y, D_v) + b_v`` (HyboNet's ``cal_dist``; ``decision``, ``dist_bias``).

    Args:
        weight: the (V, d) ManifoldParameter table ``D``.
        k: curvature parameter.

    Parameters: ``weight`` (V, d) ManifoldParameter, ``bias`` (V,) zeros.
    """

    def __init__(self, weight: geoopt.ManifoldParameter, k: float = 1.0):
        super().__init__()
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(weight.shape[0]))
        self.k = float(k)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``(..., T, d)`` points -> ``(..., T, V)`` logits."""
        return -pairwise_sqdist(y, self.weight, self.k) + self.bias


class LorentzTranslationTransformer(EncoderDecoder):
    """HyboNet's Lorentz encoder-decoder Transformer over one joint vocabulary.

    Args:
        config: see :class:`LorentzTransformerConfig`.

    Submodules: ``manifold`` (holds the frozen ``k``), ``encoder``, ``decoder``,
    ``generator``.
    """

    def __init__(self, config: LorentzTransformerConfig):
        super().__init__()
        self.config = config
        self.manifold = Lorentz(config.k)
        self.encoder = LorentzEncoder(config, self.manifold)
        self.decoder = LorentzDecoder(config, self.manifold)
        if config.tie_embeddings:
            table = self.decoder.embed.weight
        else:  # HyboNet: a deep copy of the target embeddings, trained separately
            table = geoopt.ManifoldParameter(self.decoder.embed.weight.detach().clone(),
                                             manifold=self.manifold)
        self.generator = LorentzDistanceGenerator(table, config.k)


def inner_linear_names(model: nn.Module) -> list[str]:
    """Dotted names of every ``nn.Linear`` in the model (all are LorentzLinear inner maps)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
