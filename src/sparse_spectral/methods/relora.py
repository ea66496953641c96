"""``relora``: ReLoRA* as the SST paper defines it (SPEC section 5).

LoRA, and every ``merge_interval`` steps: merge ``W += (alpha / r) B A``, re-initialise
(``B = 0``, ``A`` Gaussian) and reset **all** optimizer state of ``A`` and ``B``, with no
full-rank warm start. Two options of the original ReLoRA (Lialin et al. 2023) are off by
default: partial optimizer reset (magnitude or random pruning of a given share of the moments
instead of a full reset) and a learning-rate re-warm-up after each merge ("jagged cosine").

Why the re-initialisation is ``B = 0``, ``A`` random and not both zero: with ``B = A = 0``
both gradients ``dL/dA = s B^T G`` and ``dL/dB = s G A^T`` vanish (a saddle point that plain
gradient descent never leaves). With ``A`` random, ``B`` receives a gradient at once and
``A`` from the next step on. The paper attributes ReLoRA*'s gradient-norm collapses after each
merge to this restart near a saddle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .._util.seeding import counter_seed
from ..spectral.optim import find_state, reset_param_state
from .base import check_int, register_method
from .lora import LoRA, LoRAConfig

RESET_MODES = ("full", "magnitude", "random")


@dataclass
class ReLoRAConfig(LoRAConfig):
    """Settings of ReLoRA*."""

    refresh_interval_field: ClassVar[str | None] = "merge_interval"

    merge_interval: int = field(
        default=50, metadata={"help": "steps between merge-and-reinit (SST's T3 by default)."})
    optimizer_reset: str = field(
        default="full", metadata={"help": f"one of {RESET_MODES}: zero all state of A and B, or "
                                  "prune the given share of each moment by magnitude / at random"})
    reset_ratio: float = field(
        default=0.99, metadata={"help": "share of moment entries zeroed by a partial reset."})
    restart_warmup_steps: int = field(
        default=0, metadata={"help": "learning-rate re-warm-up after each merge (0: off)."})

    def validate(self):
        super().validate()
        check_int("merge_interval", self.merge_interval, 1)
        if self.optimizer_reset not in RESET_MODES:
            raise ValueError(f"optimizer_reset={self.optimizer_reset!r} is unknown; allowed: "
                             f"{', '.join(RESET_MODES)}")
        if isinstance(self.reset_ratio, bool) or not isinstance(self.reset_ratio, (int, float)) \
                or not 0.0 <= self.reset_ratio <= 1.0:
            raise ValueError(f"reset_ratio={self.reset_ratio!r} must be a number in [0, 1]")
        check_int("restart_warmup_steps", self.restart_warmup_steps, 0)


@torch.no_grad()
def prune_state_(state: dict, ratio: float, mode: str, generator: torch.Generator) -> None:
    """Zero ``ratio`` of the entries of each moment tensor, in place (original ReLoRA).

    ``magnitude`` zeroes the entries of smallest absolute value, ``random`` a random subset.
    The step counter is kept, as the original ReLoRA keeps it.
    """
    for key, value in state.items():
        if key == "step" or not torch.is_tensor(value) or value.numel() == 0:
            continue
        if mode == "magnitude":
            count = int(ratio * value.numel())
            if count:
                cut = value.abs().flatten().kthvalue(count).values
                value.masked_fill_(value.abs() <= cut, 0)
        else:
            mask = torch.rand(value.shape, generator=generator) < ratio
            value.masked_fill_(mask.to(value.device), 0)


@register_method
class ReLoRA(LoRA):
    """LoRA with periodic merge, re-initialisation and optimizer reset."""

    name = "relora"
    config_class = ReLoRAConfig
    needs_after_step = True

    def after_step(self, step: int, optimizer=None) -> None:
        super().after_step(step, optimizer)
        cfg = self.config
        if self.step % cfg.merge_interval:
            return
        merges = self.step // cfg.merge_interval
        for index, (_, layer) in enumerate(self.layers):
            layer.merge_()
            layer.reset_lora_(self._generator(index, draw=merges))
            params = [layer.lora_A, layer.lora_B]
            if cfg.optimizer_reset == "full":
                reset_param_state(optimizer, params)
                continue
            for which, param in enumerate(params):
                state = find_state(optimizer, param)
                if state is not None:
                    gen = torch.Generator().manual_seed(
                        counter_seed(cfg.seed, index, merges, which, 1))
                    prune_state_(state, cfg.reset_ratio, cfg.optimizer_reset, gen)

    def restart_cycle(self) -> int:
        """ReLoRA* restarts A, B and their optimizer state every ``merge_interval`` steps."""
        return self.config.merge_interval
