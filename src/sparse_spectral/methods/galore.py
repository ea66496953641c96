"""``galore``: GaLore, full-rank weights trained by Adam in a projected gradient space.

The baseline of SPEC section 5 (Zhao et al. 2024, "Gradient Low-Rank Projection"). Nothing in
the model is replaced: the target layers' weights go into one param group that
:class:`~sparse_spectral.methods.galore_optim.GaLoreAdamW` steps in a rank-r subspace of
their gradients, refreshed from an SVD every ``update_proj_gap`` steps; every other
trainable parameter gets plain AdamW (the life cycle shared with APOLLO is
:class:`~.projected.ProjectedMethod`). Why the published ``galore-torch`` package is not
used (its optimizer state is not ``weights_only``-loadable) is in ``galore_optim``.

GPT-2's ``Conv1D`` weights are marked ``transposed`` so that ``proj_type`` and ``rank``
refer to the (out, in) = (m, n) layout of an ``nn.Linear``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .base import LowRankConfig, register_method
from .galore_optim import (
    PROJ_TYPES,
    GaLoreAdamW,
    check_projection_settings,
    projected_shape,
    projection_side,
)
from .projected import ProjectedMethod


@dataclass
class GaLoreConfig(LowRankConfig):
    """Settings of GaLore (``rank``: r, rank of the gradient projection)."""

    refresh_interval_field: ClassVar[str | None] = "update_proj_gap"

    update_proj_gap: int = field(
        default=200, metadata={"help": "optimizer steps between two projection refreshes "
                               "(the SVD of the current gradient)."})
    scale: float = field(
        default=0.25, metadata={"flag": "galore_scale",
                                "help": "alpha: factor on the projected-back update (> 0)."})
    proj_type: str = field(
        default="std", metadata={"help": f"projected side, one of {PROJ_TYPES}; 'std' "
                                 "projects the smaller dimension of each (out, in) weight."})

    def validate(self):
        super().validate()
        check_projection_settings(self.update_proj_gap, self.scale, self.proj_type)


@register_method
class GaLore(ProjectedMethod):
    """Full-rank training whose target weights take GaLore's projected Adam steps.

    ``prepare`` replaces nothing; it checks that the targets exist and are large enough
    for the rank, and records their names and parameter ids (:class:`.ProjectedMethod`).
    The schedule (projection refresh) lives in the optimizer's per-tensor step count, so
    ``after_step`` has nothing to do and resume needs only the optimizer's state_dict.
    """

    name = "galore"
    config_class = GaLoreConfig
    optimizer_class = GaLoreAdamW
    group_name = "galore"
    label = "GaLore"
    group_marker = "rank"

    def group_settings(self) -> dict:
        cfg = self.config
        return {"rank": cfg.rank, "update_proj_gap": cfg.update_proj_gap, "scale": cfg.scale,
                "proj_type": cfg.proj_type}

    def target_state_numel(self, shape: tuple[int, int]) -> int:
        """Two moments in the projected shape, (m, r) or (r, n), and ``P``, (r, n) or (m, r)."""
        m, n = shape
        r, proj_type = self.config.rank, self.config.proj_type
        projection = r * n if projection_side(shape, proj_type) == "right" else m * r
        low_m, low_n = projected_shape(shape, r, proj_type)
        return 2 * low_m * low_n + projection
