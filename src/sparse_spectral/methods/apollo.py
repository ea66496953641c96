"""``apollo`` and ``apollo_mini``: dense weights trained by APOLLO's scaled-gradient steps.

APOLLO (Zhu et al. 2024, "APOLLO: SGD-like Memory, AdamW-level Performance") keeps Adam's
moments only for a random rank-r projection of each target weight's gradient and uses them
to scale the raw gradient per channel; APOLLO-Mini projects to rank 1 and scales the whole
tensor by one factor (the update rule and how it compares with ``apollo-torch`` are in
:mod:`.apollo_optim`). Nothing in the model is replaced: the target weights go into one
``apollo`` param group of :class:`~.apollo_optim.ApolloAdamW`, every other trainable
parameter gets plain AdamW (the life cycle is :class:`~.projected.ProjectedMethod`, shared
with GaLore).

``apollo_mini`` is ``apollo`` with ``rank=1`` and ``scale_type="tensor"`` fixed; its
``apollo_scale`` defaults to 128 (apollo-torch's README) instead of APOLLO's 1. A run's
``rank`` therefore reaches ``apollo`` only. The paper's LLaMA runs use rank 256 (1/4 of the
width, as GaLore) with ``update_proj_gap`` 200.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .apollo_optim import SCALE_TYPES, ApolloAdamW, check_settings, projected_shape
from .base import LowRankConfig, register_method, register_variant
from .projected import ProjectedMethod

#: ``apollo_scale`` when left unset, by ``scale_type`` (apollo-torch's README values).
DEFAULT_SCALES = {"channel": 1.0, "tensor": 128.0}


@dataclass
class ApolloConfig(LowRankConfig):
    """Settings of APOLLO and APOLLO-Mini (``rank``: r, rank of the random projection)."""

    refresh_interval_field: ClassVar[str | None] = "update_proj_gap"

    update_proj_gap: int = field(
        default=200, metadata={"help": "optimizer steps between two projection refreshes "
                               "(GaLore: an SVD of the current gradient; APOLLO: a new random "
                               "projection)."})
    apollo_scale: float | None = field(
        default=None, metadata={"help": "APOLLO's scale: the update is multiplied by its "
                                "square root (the paper's alpha; > 0). None: 1 with "
                                "scale_type channel (APOLLO), 128 with tensor (APOLLO-Mini)."})
    scale_type: str = field(
        default="channel", metadata={"help": f"one of {SCALE_TYPES}: one gradient scaling "
                                     "factor per channel (APOLLO) or per tensor (APOLLO-Mini)."})
    norm_growth_limit: float = field(
        default=1.01, metadata={"help": "gamma of the norm-growth limiter: a step's scaled "
                                "gradient norm grows at most gamma-fold (>= 1; 0: no limiter)."})
    seed: int = field(
        default=0, metadata={"help": "seed of the counter-seeded random projections."})

    def validate(self):
        super().validate()
        if self.apollo_scale is None and self.scale_type in DEFAULT_SCALES:
            self.apollo_scale = DEFAULT_SCALES[self.scale_type]
        check_settings(self.rank, self.update_proj_gap, self.apollo_scale, self.scale_type,
                       self.norm_growth_limit, self.seed, scale_name="apollo_scale")


@register_method
class Apollo(ProjectedMethod):
    """Full-rank training whose target weights take APOLLO's scaled-gradient steps."""

    name = "apollo"
    config_class = ApolloConfig
    optimizer_class = ApolloAdamW
    group_name = "apollo"
    label = "APOLLO"
    group_marker = "scale_type"

    def group_settings(self) -> dict:
        cfg = self.config
        return {"rank": cfg.rank, "update_proj_gap": cfg.update_proj_gap,
                "scale": cfg.apollo_scale, "scale_type": cfg.scale_type,
                "norm_growth_limit": cfg.norm_growth_limit, "seed": cfg.seed}

    def target_state_numel(self, shape: tuple[int, int]) -> int:
        """Two moments in the projected shape, (m, r) or (r, n), and the limiter's norm."""
        low_m, low_n = projected_shape(shape, self.config.rank)
        return 2 * low_m * low_n + (1 if self.config.norm_growth_limit else 0)


register_variant("apollo_mini", Apollo, rank=1, scale_type="tensor")
