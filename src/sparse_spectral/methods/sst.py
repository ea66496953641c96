"""``sst``: Sparse Spectral Training (SPEC sections 1-4)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._util.checks import is_int
from .._util.collectives import broadcast_, broadcast_indices, world
from .._util.seeding import counter_seed
from .._util.shards import full, is_sharded
from ..spectral.cost import FORWARD_MODES
from ..spectral.layer import SpectralLinear, normalize_layers_
from ..spectral.optim import reset_param_state
from ..spectral.sampling import SAMPLERS, iterations_per_round, select_indices
from .base import (
    LowRankConfig,
    ReplacingMethod,
    check_int,
    parameter_ids,
    register_method,
    register_variant,
)

_SVD_DTYPES = {"float32": torch.float32, "float64": torch.float64}
FROZEN_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_INITS = ("svd", "random")

# The paper's ablation, selectable by name: each is ``sst`` with one setting changed.
SST_VARIANTS = {
    "sst-uniform": {"sampler": "uniform"},
    "sst-sequential": {"sampler": "sequential"},
    "sst-top-r": {"sampler": "top-r"},
    "sst-mix": {"lam": 0.5},
    "sst-sampled-s": {"update_all_singular_values": False},
    "sst-random-init": {"init": "random"},
    "sst-default-grad": {"enhanced_gradient": False},
}


@dataclass
class SSTConfig(LowRankConfig):
    """Settings of Sparse Spectral Training (``rank``: r, singular-vector pairs trained at a
    time)."""

    refresh_interval_field: ClassVar[str | None] = "iteration_interval"

    iteration_interval: int = field(
        default=50, metadata={"help": "T3: optimizer steps between two selections."})
    iterations_per_round: int | None = field(
        default=None, metadata={"help": "T2: iterations between re-SVDs; None: ceil(k / r)."})
    sampler: str = field(default="weighted", metadata={"help": f"one of {SAMPLERS}"})
    lam: float = field(
        default=0.0, metadata={"help": "uniform mix of the weighted sampler, in [0, 1]."})
    enhanced_gradient: bool = field(
        default=True, metadata={"help": "drop the s_i factor from the active vectors' gradients."})
    update_all_singular_values: bool = field(
        default=True, metadata={"help": "train every singular value each step (False: only the "
                                "sampled ones, the paper's ablation)."})
    restart_warmup_steps: int = field(
        default=0, metadata={"help": "learning-rate re-warm-up after each selection change "
                             "(every T3 steps; 0: off)."})
    init: str = field(
        default="svd", metadata={"help": "'svd' (exact conversion) or 'random' (random "
                                 "orthonormal factors with the same singular values; ablation)."})
    seed: int = field(default=0, metadata={"help": "seed of the counter-based sampler."})
    forward_mode: str = field(
        default="auto", metadata={"help": "'factored', 'composed' (build U diag(s) Vh once per "
                                  "step, run as a dense layer) or 'auto' (the cheaper one per "
                                  "call by a multiply-add count)."})
    stagger_resvd: bool = field(
        default=True, metadata={"help": "run each layer's schedule on its own clock, offset "
                                "evenly over a round, so the layers' re-SVDs fall on different "
                                "steps (False: every layer re-SVDs and reselects together)."})
    svd_dtype: str = field(default="float32", metadata={"help": "'float32' or 'float64'."})
    frozen_dtype: str | None = field(
        default=None, metadata={"help": "store the frozen singular vectors in 'bfloat16', "
                                "'float16' or 'float32' (None: the training dtype); s, the "
                                "active vectors and their optimizer state keep the training "
                                "dtype. bfloat16 halves the frozen factors' bytes; a vector "
                                "leaving the active set is rounded to it."})
    singular_value_lr_scale: float = field(
        default=1.0, metadata={"help": "learning rate of the singular values s as a multiple of "
                               "lr (the vectors keep lr; 1.0: one rate for all, the paper's "
                               "behaviour; the paper does not say)."})

    def validate(self):
        super().validate()
        check_int("iteration_interval (T3)", self.iteration_interval, 1)
        if self.iterations_per_round is not None and (
                not is_int(self.iterations_per_round) or self.iterations_per_round < 1):
            raise ValueError(f"iterations_per_round (T2)={self.iterations_per_round!r} must be "
                             "None or an int >= 1")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) \
                or not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam={self.lam!r} must be a number in [0, 1]")
        if self.svd_dtype not in _SVD_DTYPES:
            raise ValueError(f"svd_dtype={self.svd_dtype!r}; allowed: {sorted(_SVD_DTYPES)}")
        check_int("restart_warmup_steps", self.restart_warmup_steps, 0)
        if self.forward_mode not in FORWARD_MODES:
            raise ValueError(f"forward_mode={self.forward_mode!r} is unknown; allowed: "
                             f"{', '.join(FORWARD_MODES)}")
        if not isinstance(self.stagger_resvd, bool):
            raise ValueError(f"stagger_resvd={self.stagger_resvd!r} must be true or false")
        if self.stagger_resvd and self.restart_warmup_steps:
            raise ValueError(
                f"restart_warmup_steps={self.restart_warmup_steps} re-warms the learning rate "
                "when the selections change, which needs every layer to change on the same "
                "step: set stagger_resvd=False with it")
        if self.init not in _INITS:
            raise ValueError(f"init={self.init!r} is unknown; allowed: {', '.join(_INITS)}")
        if isinstance(self.singular_value_lr_scale, bool) or not isinstance(
                self.singular_value_lr_scale, (int, float)) \
                or not 0.0 < self.singular_value_lr_scale < float("inf"):
            raise ValueError(f"singular_value_lr_scale={self.singular_value_lr_scale!r} must be "
                             "a finite number > 0")
        if self.frozen_dtype is not None and self.frozen_dtype not in FROZEN_DTYPES:
            raise ValueError(f"frozen_dtype={self.frozen_dtype!r} is unknown; allowed: None, "
                             f"{', '.join(FROZEN_DTYPES)}")


@register_method
class SparseSpectral(ReplacingMethod):
    """Replace target linear layers by :class:`SpectralLinear` and run the SST schedule.

    Schedule (``step`` counts completed optimizer steps): after every step, clamp ``s`` and
    renormalise the active vectors; every T3 steps a new iteration starts with a new
    selection; after every T2 iterations of a layer (a round) its ``U diag(s) Vh`` is
    re-decomposed first. Draws are keyed by ``(seed, layer index, iteration index)``.

    With ``stagger_resvd`` (default) each layer runs this schedule on its own clock,
    ``step + offset``, with the offsets of the L layers spread evenly over a round
    (``offset_l = l * T2 * T3 // L``): the layers' re-SVDs (and selection changes) then fall
    on different steps instead of stalling one step with every SVD. Every layer still
    changes its selection every T3 steps and re-decomposes every T2 * T3 steps.
    """

    name = "sst"
    config_class = SSTConfig
    layer_type = SpectralLinear
    draws_pruning_curve = True
    needs_after_step = True

    def convert_layer(self, index: int, module: nn.Module) -> SpectralLinear:
        cfg = self.config
        generator = torch.Generator().manual_seed(counter_seed(cfg.seed, index, -1))
        return SpectralLinear.from_linear(
            module, cfg.rank, enhanced=cfg.enhanced_gradient,
            svd_dtype=_SVD_DTYPES[cfg.svd_dtype], init=cfg.init, generator=generator,
            all_singular_values=cfg.update_all_singular_values, forward_mode=cfg.forward_mode,
            frozen_dtype=None if cfg.frozen_dtype is None else FROZEN_DTYPES[cfg.frozen_dtype])

    def start_layers(self) -> None:
        """Draw the first selections (called by ``prepare`` after converting).

        A model on the meta device (shapes only, for memory planning) keeps the first r
        indices: there are no singular values to sample from.
        """
        for index, (_, layer) in enumerate(self.layers):
            if not layer.s.is_meta:
                iteration = self._clock(layer, index, 0) // self.config.iteration_interval
                layer.swap_(self._draw(layer, index, iteration))

    def _special_parameters(self, model: nn.Module) -> set[int]:
        return {id(p) for _, layer in self.converted_layers(model)
                for p in (layer.U_active, layer.Vh_active, layer.s)}

    def param_groups(self, model: nn.Module, weight_decay: float = 0.0,
                     exclude: Iterable[torch.Tensor] = ()) -> list[dict]:
        """Dense groups plus one ``spectral`` group with per-slot step counters.

        Weight decay is off for the spectral group: the active vectors are renormalised
        after every step, and decaying ``s`` is a choice the paper does not make. With
        ``singular_value_lr_scale != 1`` the singular values get a ``singular_values`` group
        of their own whose ``lr_scale`` :meth:`build_optimizer` turns into its learning rate
        (the schedule then scales both groups alike). ``exclude`` leaves parameters out of
        every group (:meth:`TrainingMethod.param_groups`).
        """
        exclude = list(exclude)
        groups = super().param_groups(model, weight_decay, exclude=exclude)
        skip = parameter_ids(exclude)
        scale = self.config.singular_value_lr_scale
        spectral = {"name": "spectral", "params": [], "slot_dims": [], "weight_decay": 0.0}
        values = ({"name": "singular_values", "params": [], "slot_dims": [],
                   "weight_decay": 0.0, "lr_scale": float(scale)} if scale != 1.0 else spectral)
        for _, layer in self.converted_layers(model):
            # s restarts per index only when just the sampled values train.
            entries = ((spectral, layer.U_active, 1), (spectral, layer.Vh_active, 0),
                       (values, layer.s, -1 if layer.all_singular_values else 0))
            for group, p, dim in entries:
                if id(p) not in skip:
                    group["params"].append(p)
                    group["slot_dims"].append(dim)
        groups.append(spectral)
        if values is not spectral and values["params"]:
            groups.append(values)
        return groups

    def after_step(self, step: int, optimizer=None) -> None:
        """Clamp and renormalise; at iteration ends resample, at round ends re-SVD first.

        Under ``torch.distributed`` (DDP) every rank runs this on identical state; two
        collectives keep the result identical by construction: layer ``l``'s re-SVD is
        computed on rank ``l mod world_size`` and broadcast from there (LAPACK's bits differ
        across thread counts), and rank 0's drawn indices of every layer that resamples at
        this step are broadcast as one int64 message (a safety net: the draws are
        counter-seeded, hence already equal). Both run only inside
        :func:`~sparse_spectral._util.collectives.replicated_ranks` (the loop enters it for
        DDP runs); elsewhere they are no-ops.
        """
        super().after_step(step, optimizer)
        cfg = self.config
        for name, layer in self.layers:
            if layer.U_frozen.requires_grad or layer.Vh_frozen.requires_grad:
                raise RuntimeError(f"frozen factors of {name!r} were made trainable; SST would "
                                   "allocate full-size gradients (was requires_grad_(True) "
                                   "called on the model?)")
        normalize_layers_([layer for _, layer in self.layers])  # each layer's normalize_()
        due = []
        for index, (_, layer) in enumerate(self.layers):
            clock = self._clock(layer, index, self.step)
            if clock % cfg.iteration_interval:
                continue
            iteration = clock // cfg.iteration_interval
            if iteration % self._rounds(layer) == 0:
                self._resvd(layer, index, optimizer)
            due.append((index, layer, iteration))
        # Layers are independent: drawing and swapping after all re-SVDs gives what the
        # layer-by-layer order gives, with one broadcast for all draws.
        draws = broadcast_indices([self._draw(layer, index, iteration)
                                   for index, layer, iteration in due], src=0)
        for (_, layer, _), new_idx in zip(due, draws, strict=True):
            layer.swap_(new_idx, optimizer)
        for _, layer in self.layers:  # the step's composed W is stale now: free its memory
            layer.release_composed_weight()

    def _resvd(self, layer: SpectralLinear, index: int, optimizer) -> None:
        """Re-decompose ``layer`` (on its owner rank under DDP, then broadcast in place).

        Under FSDP2 (sharded factors) every rank takes part in :meth:`resvd_` itself, which
        is collective and leaves every rank with its shard of the same factors.
        """
        svd_dtype = _SVD_DTYPES[self.config.svd_dtype]
        if is_sharded(layer.U_active):
            layer.resvd_(optimizer, svd_dtype=svd_dtype)
            return
        rank, size = world()
        owner = index % size
        if rank == owner:
            layer.resvd_(optimizer, svd_dtype=svd_dtype)
        else:  # the owner's factors arrive below; the moment restart is local
            reset_param_state(optimizer, [layer.s, layer.U_active, layer.Vh_active])
        broadcast_([layer.s, layer.U_active, layer.Vh_active, layer.U_frozen, layer.Vh_frozen],
                   src=owner)

    def restart_cycle(self) -> int:
        """Swapped-in slots restart their moments every T3 steps (all of them after a re-SVD)."""
        return self.config.iteration_interval

    def pruning_view(self, model: nn.Module) -> nn.Module:
        """``model`` itself: pruning truncates the spectral layers' own ``s`` (in a copy)."""
        return model

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Step and config; selections for a consistency check.

        The selections also live in the model's state_dict (buffer ``idx``, beside the
        active vectors they index), which is what restores them. The sampler has no RNG
        state to save: each draw is keyed by ``(seed, layer, iteration)``.
        """
        state = super().state_dict()
        state["selections"] = {name: layer.idx.tolist() for name, layer in self.layers}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step; if attached, check the model holds the saved selections.

        Load the model's state_dict before this one. A state saved before ``frozen_dtype``
        existed has the frozen factors in the training dtype, which is its None; one saved
        before ``singular_value_lr_scale`` existed trained ``s`` at lr, its 1.0.
        """
        state = {**state, "config": {"frozen_dtype": None, "singular_value_lr_scale": 1.0,
                                     **state.get("config", {})}}
        super().load_state_dict(state)
        saved = state.get("selections", {})
        for name, layer in self.layers:
            if name in saved and saved[name] != layer.idx.tolist():
                raise ValueError(f"layer {name!r} holds selection {layer.idx.tolist()} but the "
                                 f"method state says {saved[name]}; load the model's "
                                 "state_dict from the same checkpoint first")

    # --------------------------------------------------------------- helpers
    def _rounds(self, layer: SpectralLinear) -> int:
        return self.config.iterations_per_round or iterations_per_round(layer.k, layer.rank)

    def _clock(self, layer: SpectralLinear, index: int, step: int) -> int:
        """The layer's own step count: ``step`` shifted by its share of a round when staggered."""
        if not self.config.stagger_resvd:
            return step
        steps_per_round = self._rounds(layer) * self.config.iteration_interval
        return step + index * steps_per_round // len(self.layers)

    def _draw(self, layer: SpectralLinear, index: int, iteration: int) -> torch.Tensor:
        cfg = self.config
        # full(): under FSDP2 s is sharded; every rank draws from the whole spectrum.
        return select_indices(cfg.sampler, full(layer.s), layer.rank,
                              key=(cfg.seed, index, iteration), lam=cfg.lam,
                              iteration_in_round=iteration % self._rounds(layer))


for _variant, _preset in SST_VARIANTS.items():
    register_variant(_variant, SparseSpectral, **_preset)
