"""``lora``: LoRA used for pre-training (SPEC section 5).

The target weight is the frozen *random initialisation* ``W``; each target layer computes
``h = W x + b + (alpha / r) B A x`` with ``B = 0`` and ``A`` Gaussian at the start, so the
network starts as the dense one. Only ``A``, ``B`` and every parameter outside the target
layers train; the target's bias stays frozen (peft's ``bias="none"``), which makes the
trainable count of a target exactly ``r (m + n)``.

``A`` is drawn from ``N(0, (1 / r)^2)`` (peft's ``init_lora_weights="gaussian"``), from a
generator seeded by ``(seed, layer index, draw index)`` so that initialisation and ReLoRA's
re-initialisations do not depend on, or disturb, the global RNG.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .._util.seeding import counter_seed
from .._util.shards import full, local, local_slice
from ..linear import FixedOperand, apply_linear, is_conv1d, linear_shape
from .base import LowRankConfig, ReplacingMethod, register_method


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    ``y = base(x) + (alpha / r) * (x A^T) B^T``.

    Args:
        base: the ``nn.Linear`` or GPT-2 ``Conv1D`` to adapt; its parameters are frozen.
        rank: ``r``.
        alpha: scale numerator; the update is multiplied by ``alpha / r``.
        generator: source of ``A``'s initial values.

    Parameters: ``lora_A`` (r, n), ``lora_B`` (m, r).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        m, n = linear_shape(base)
        self.base = base
        self.base.requires_grad_(False)
        self.conv1d = is_conv1d(base)
        self.in_features, self.out_features, self.rank = n, m, rank
        self.scaling = alpha / rank
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, n, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(m, rank, dtype=dtype, device=device))
        self.reset_lora_(generator)

    @property
    def init_std(self) -> float:
        """Standard deviation of ``A`` at (re-)initialisation: ``1 / r``."""
        return 1.0 / self.rank

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + (alpha / r) B A``, read-only, in the base's layout.

        ``(m, n)`` for an ``nn.Linear`` base, ``(n, m)`` for a ``Conv1D`` one; for code that
        reads a linear layer's ``.weight`` (a dtype check, or a functional call such as
        ``nn.MultiheadAttention``'s with ``out_proj.weight``). Differentiable in ``A`` and
        ``B`` by plain autograd, like :meth:`forward`. Each read costs ``m n r``
        multiply-adds and a new ``(m, n)`` tensor; training goes through :meth:`forward`.
        (peft's LoRA layers return the base weight here; the effective one keeps a
        functional use correct.) Not a parameter, not in the state_dict.
        """
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return self.base.weight + (delta.t() if self.conv1d else delta)

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias (frozen), for code that reads ``.bias`` beside ``.weight``."""
        return self.base.bias

    accepts_operands = True  # fixed (T, n) operands too: see sparse_spectral.linear

    def forward(self, x: torch.Tensor | FixedOperand) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``; a fixed operand ``(T, n) -> (T, m)``."""
        return apply_linear(self.base, x) + (x @ self.lora_A.t()) @ self.lora_B.t() * self.scaling

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A`` in float32, shape ``(m, n)``."""
        return (full(self.lora_B).float() @ full(self.lora_A).float()) * self.scaling

    @torch.no_grad()
    def merge_(self) -> None:
        """Fold the update into the frozen weight (in float32, cast once); zero ``B``.

        The function is unchanged: ``W' x + 0 = W x + (alpha / r) B A x``.
        """
        weight = self.base.weight
        delta = self.delta_weight()
        delta = delta.t() if self.conv1d else delta
        # Under FSDP2 delta_weight() gathered A and B (r (m + n) numbers); each rank adds its
        # own shard of the (m, n) update to its shard of W.
        shard = local(weight)
        shard.copy_((shard.float() + local_slice(weight, delta)).to(weight.dtype))
        local(self.lora_B).zero_()

    @torch.no_grad()
    def reset_lora_(self, generator: torch.Generator | None = None) -> None:
        """``B = 0`` and ``A ~ N(0, (1 / r)^2)``, in place."""
        values = torch.randn(self.lora_A.shape, generator=generator) * self.init_std
        # Every rank draws the whole A (same generator state) and keeps its shard (FSDP2).
        local(self.lora_A).copy_(local_slice(self.lora_A, values))
        local(self.lora_B).zero_()

    @torch.no_grad()
    def to_linear(self) -> nn.Module:
        """A merged copy of the base layer."""
        dense = copy.deepcopy(self.base)
        delta = self.delta_weight()
        dense.weight.copy_((dense.weight.float() + (delta.t() if self.conv1d else delta))
                           .to(dense.weight.dtype))
        dense.requires_grad_(True)
        return dense

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, scaling={self.scaling:g}")


@dataclass
class LoRAConfig(LowRankConfig):
    """Settings of LoRA for pre-training (``rank``: r, rank of the update B A)."""

    alpha: float | None = field(
        default=None, metadata={"help": "update scale numerator (scaling = alpha / r); "
                                "None means alpha = r (scaling 1)."})
    seed: int = field(default=0, metadata={"help": "seed of A's (re-)initialisations."})

    def validate(self):
        super().validate()
        if self.alpha is not None and (isinstance(self.alpha, bool) or
                                       not isinstance(self.alpha, (int, float)) or
                                       self.alpha <= 0):
            raise ValueError(f"alpha={self.alpha!r} must be None or a number > 0")

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@register_method
class LoRA(ReplacingMethod):
    """Wrap every target linear layer in :class:`LoRALinear`."""

    name = "lora"
    config_class = LoRAConfig
    layer_type = LoRALinear

    def convert_layer(self, index: int, module: nn.Module) -> LoRALinear:
        cfg = self.config
        return LoRALinear(module, cfg.rank, cfg.effective_alpha, self._generator(index, draw=0))

    def _generator(self, index: int, draw: int) -> torch.Generator:
        return torch.Generator().manual_seed(counter_seed(self.config.seed, index, draw))
