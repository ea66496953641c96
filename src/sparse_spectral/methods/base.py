"""The training-method life cycle and its registry.

Every method (full, sst, and the baselines of later issues) is one object::

    method = make_method("sst", rank=16, iteration_interval=50)
    # or, from a run's common choices: method_for_run("sst", rank=16, interval=50)
    model = method.prepare(model)              # replace target layers, freeze what must be frozen
    optimizer = method.build_optimizer(model, lr=1e-3)
    ... loss.backward(); optimizer.step(); method.after_step(step, optimizer)
    dense = method.merge(model)                # plain dense model (a copy)

Tasks, the training loop, the CLI and checkpoints talk to methods only through this
interface. The learning-rate envelope lives in :mod:`..training.schedules`
(``method_lr_lambda``); a method contributes only :meth:`TrainingMethod.restart_factor`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._util.checks import is_int
from .._util.fields import Checked, check_value, field_types
from ..spectral.optim import SlotAdamW
from ..targeting import find_target_modules, linear_shape, replace_module
from .guard import watch

TargetSpec = str | list[str] | None


def check_int(label: str, value: Any, minimum: int | None = None) -> None:
    """Raise a ValueError naming ``label=value`` unless it is an int (``>= minimum``).

    Args:
        label: how the message names the setting, e.g. ``"rank"`` or ``"iteration_interval
            (T3)"``.
        value: the value to check (``bool`` is not an int here).
        minimum: smallest allowed value, or None for any int.
    """
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{label}={value!r} must be an int{bound}")


def check_projected_group(group: dict, kind: str) -> None:
    """Check a projecting optimizer's param group (GaLore's, APOLLO's; ``kind`` names it).

    Every parameter must be a 2-D weight with ``group["rank"] <= min(m, n)``; the group's
    ``transposed`` flags (one per parameter, default all False) are filled in.
    """
    params = group["params"]
    transposed = group.setdefault("transposed", [False] * len(params))
    if len(transposed) != len(params):
        raise ValueError(f"transposed has {len(transposed)} entries for "
                         f"{len(params)} parameters")
    for p in params:
        if p.dim() != 2 or group["rank"] > min(p.shape):
            raise ValueError(f"{kind} group needs 2-D weights with rank <= min(m, n); "
                             f"got shape {tuple(p.shape)} with rank={group['rank']}")


def parameter_ids(params: Iterable[torch.Tensor]) -> set[int]:
    """``id`` s of ``params`` (how param groups test membership without tensor equality)."""
    return {id(p) for p in params}


def check_rank_fits(name: str, module: nn.Module, rank: int) -> None:
    """Raise unless ``1 <= rank <= min(m, n)`` for the linear layer ``name``."""
    m, n = linear_shape(module)
    if rank > min(m, n):
        raise ValueError(f"rank={rank} is out of range for layer {name!r} of shape "
                         f"(m={m}, n={n}): it must be in [1, min(m, n) = {min(m, n)}]")


@dataclass
class MethodConfig(Checked):
    """Settings shared by every method.

    Attributes:
        refresh_interval_field: name of the field holding the steps between two refreshes
            of the method's trained subspace (SST's T3, ReLoRA*'s merges, GaLore's
            projections), or None for a method without one. :func:`method_for_run` puts a
            run's common interval there.
    """

    refresh_interval_field: ClassVar[str | None] = None

    target_modules: TargetSpec = field(
        default="all-linear",
        metadata={"help": "Modules the method replaces: a regex (full match on the dotted "
                  "name), a list of name suffixes, or 'all-linear' (every linear layer but "
                  "the output embedding and task heads: classifier, score, qa_outputs, "
                  "classification_head)."},
    )
    exclude_modules: TargetSpec = field(
        default=None, metadata={"help": "Modules never replaced; same forms as target_modules."}
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LowRankConfig(MethodConfig):
    """Settings of a method that trains a rank-r part of each target: ``rank``, checked here.

    Subclasses with a ``seed`` field declare it themselves, where it has always been in
    their field order (``to_dict`` order is what checkpoints and ``method.json`` store); this
    class checks it too. GaLore has no seed: its projections are deterministic.
    """

    rank: int = field(
        default=8, metadata={"help": "r: the rank trained (SST: singular-vector pairs active at "
                             "a time; LoRA and ReLoRA*: rank of the update B A; GaLore: rank of "
                             "the gradient projection)."})

    def validate(self):
        super().validate()
        check_int("rank", self.rank, 1)
        if hasattr(self, "seed"):
            check_int("seed", self.seed)


class TrainingMethod:
    """Base class: ``full`` training is this life cycle with nothing replaced.

    Attributes:
        name: registry name (what state dicts record).
        config_class: the method's config dataclass.
        draws_pruning_curve: whether tasks draw the spectrum-pruning curve of this method
            (the paper's figure compares full and sst); see :attr:`supports_pruning_curve`.
        variant: the ablation variant's name when :func:`make_method` built the method by
            one (e.g. ``"sst-uniform"``), else None. Not saved: a variant's state reloads as
            the plain method with the variant's config.
        needs_after_step: whether training is wrong without :meth:`after_step` after every
            optimizer step; :mod:`.guard` then raises when steps run without it.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    draws_pruning_curve: ClassVar[bool] = False
    needs_after_step: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_class()
        self.step = 0
        self.variant: str | None = None

    @property
    def supports_pruning_curve(self) -> bool:
        """Whether a task should compute this method's pruning curve (never for a variant)."""
        return self.draws_pruning_curve and self.variant is None

    # --------------------------------------------------------------- life cycle
    def prepare(self, model: nn.Module) -> nn.Module:
        """Reshape ``model`` in place for this method and return it."""
        return model

    def param_groups(self, model: nn.Module, weight_decay: float = 0.0,
                     exclude: Iterable[torch.Tensor] = ()) -> list[dict]:
        """Optimizer param groups: dense weights (decayed), 1-D tensors (not decayed).

        Methods with special parameters put them in groups of their own.

        Args:
            model: the prepared model.
            weight_decay: decay of the ``decay`` group.
            exclude: parameters left out of every group (e.g. manifold parameters that a
                Riemannian optimizer trains); the other groups keep their order.
        """
        decay, no_decay = [], []
        for _, p in self._dense_trainable(model, exclude):
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [
            {"name": "decay", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def build_optimizer(self, model: nn.Module, optimizer_cls=None, lr: float = 1e-3,
                        weight_decay: float = 0.0, exclude: Iterable[torch.Tensor] = (),
                        **kwargs) -> torch.optim.Optimizer:
        """Build an optimizer over :meth:`param_groups` (default :class:`SlotAdamW`).

        ``exclude``: parameters the optimizer must not hold (see :meth:`param_groups`). A
        group with an ``lr_scale`` gets ``lr * lr_scale`` as its own learning rate (the key
        stays in the group, so a checkpoint shows it).
        """
        optimizer_cls = optimizer_cls or SlotAdamW
        groups = [{**group, "lr": lr * group["lr_scale"]} if "lr_scale" in group else group
                  for group in self.param_groups(model, weight_decay, exclude=exclude)]
        return optimizer_cls(groups, lr=lr, **kwargs)

    def after_step(self, step: int, optimizer=None) -> None:
        """Run the method's schedule after optimizer step number ``step`` (1-based)."""
        self.step = int(step)

    def restart_factor(self, step_index: int) -> float:
        """The method's factor on the learning-rate envelope at ``LambdaLR`` index ``step_index``.

        1.0, except while re-warming after a restart: methods that restart optimizer state
        every :meth:`restart_cycle` steps and have ``config.restart_warmup_steps > 0`` ramp
        linearly from 0 over that many steps after each restart (ReLoRA's "jagged cosine",
        with :func:`~..training.schedules.method_lr_lambda` as the envelope).

        Args:
            step_index: 0 for the first optimizer step (``LambdaLR``'s convention).
        """
        cycle = self.restart_cycle()
        rewarm = getattr(self.config, "restart_warmup_steps", 0)
        if cycle and rewarm:
            since_restart = step_index % cycle
            if step_index >= cycle and since_restart < rewarm:
                return since_restart / rewarm
        return 1.0

    def restart_cycle(self) -> int | None:
        """Steps between the method's optimizer-state restarts, or None if it has none."""
        return None

    def merge(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` made of plain dense layers."""
        return copy.deepcopy(model)

    def pruning_view(self, model: nn.Module) -> nn.Module:
        """The model whose spectrum a pruning curve truncates: by default :meth:`merge`'s copy.

        ``prune_spectrum`` copies what it prunes, so a method whose layers it prunes
        directly may return ``model`` itself.
        """
        return self.merge(model)

    def planned_state_numel(self, model: nn.Module) -> dict[int, int]:
        """``{id(parameter): numbers}`` of the optimizer state of parameters whose state is
        not Adam's two moments of their own shape (GaLore's and APOLLO's projected targets),
        without step counters; empty by default. Shapes only, so it works on the meta
        device (:func:`~..accounting.planned_state_bytes` reads it)."""
        return {}

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "config": self.config.to_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"state is for method {state.get('method')!r}, not {self.name!r}")
        if state.get("config") != self.config.to_dict():
            raise ValueError(
                f"state was saved with config {state.get('config')}, this method has "
                f"{self.config.to_dict()}; build the method from the saved config"
            )
        self.step = int(state["step"])

    # --------------------------------------------------------------- helpers
    def _special_parameters(self, model: nn.Module) -> set[int]:
        """ids of parameters that live in a method-specific group."""
        return set()

    def _dense_trainable(self, model: nn.Module, exclude: Iterable[torch.Tensor] = ()):
        """``(name, parameter)`` of trainable parameters outside special groups and ``exclude``."""
        skip = self._special_parameters(model) | parameter_ids(exclude)
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in skip:
                yield name, p

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class ReplacingMethod(TrainingMethod):
    """A method that swaps every target linear layer for a module of ``layer_type``.

    Subclasses give ``layer_type`` (with a ``to_linear()`` method) and :meth:`convert_layer`;
    this class finds and checks the targets, converts them, keeps the converted layers in
    ``self.layers`` (in model order) and merges them back.
    """

    layer_type: ClassVar[type[nn.Module]] = nn.Module

    def __init__(self, config: MethodConfig | None = None):
        super().__init__(config)
        self.layers: list[tuple[str, nn.Module]] = []

    def convert_layer(self, index: int, module: nn.Module) -> nn.Module:
        """The replacement of target number ``index`` (a linear layer)."""
        raise NotImplementedError

    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The layers :meth:`prepare` replaces, each checked against the rank.

        Raises:
            ValueError: nothing matches, or a target is too small for the rank.
        """
        cfg = self.config
        targets = find_target_modules(model, cfg.target_modules, cfg.exclude_modules)
        for name, module in targets:
            check_rank_fits(name, module, cfg.rank)
        return targets

    def prepare(self, model: nn.Module) -> nn.Module:
        """Replace every target in place (all checked before any is touched)."""
        for index, (name, module) in enumerate(self.targets(model)):
            replace_module(model, name, self.convert_layer(index, module))
        self.attach(model)
        self.start_layers()
        return model

    def start_layers(self) -> None:
        """Set the converted layers' starting state, once, right after conversion.

        Nothing by default; SST draws the first selections here. :meth:`prepare` calls it,
        and so does :func:`~sparse_spectral.models.materialize.materialize` (which converts
        layer by layer itself); :meth:`attach` does not (a loaded model has its state).
        """

    def attach(self, model: nn.Module) -> nn.Module:
        """Bind this method to an already converted model (e.g. after loading)."""
        self.layers = self.converted_layers(model)
        if not self.layers:
            raise ValueError(f"model has no {self.layer_type.__name__} layer; call prepare() first")
        watch(self)  # fail loudly if training skips after_step (see .guard)
        return model

    def converted_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, self.layer_type)]

    def merge(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` with every converted layer turned back into a dense one."""
        merged = copy.deepcopy(model)
        for name, layer in self.converted_layers(merged):
            replace_module(merged, name, layer.to_linear())
        return merged


_REGISTRY: dict[str, type[TrainingMethod]] = {}
_VARIANTS: dict[str, tuple[type[TrainingMethod], dict[str, Any]]] = {}


def register_method(cls: type[TrainingMethod]) -> type[TrainingMethod]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY or cls.name in _VARIANTS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def register_variant(name: str, cls: type[TrainingMethod], **preset) -> None:
    """Register ``name`` as ``cls`` with some config fields preset (an ablation variant).

    The variant is an ordinary instance of ``cls``: its state records ``cls.name`` and the
    full config, so it reloads without the variant name.
    """
    if name in _REGISTRY or name in _VARIANTS:
        raise ValueError(f"method name {name!r} is already registered")
    _check_settings(name, cls, preset)
    _VARIANTS[name] = (cls, preset)


def available_methods() -> list[str]:
    return sorted([*_REGISTRY, *_VARIANTS])


def _check_settings(name: str, cls: type[TrainingMethod], settings: dict[str, Any]) -> None:
    allowed = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"method {name!r} has no setting(s) {unknown}; allowed: {sorted(allowed)}")


def _lookup(name: str) -> tuple[type[TrainingMethod], dict[str, Any]]:
    """The class of method (or variant) ``name`` and the config fields it presets."""
    if name in _VARIANTS:
        return _VARIANTS[name]
    if name in _REGISTRY:
        return _REGISTRY[name], {}
    raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")


def method_config_class(name: str) -> type[MethodConfig]:
    """The config dataclass of method (or variant) ``name``, e.g. to generate CLI flags.

    Every field carries ``metadata["help"]``; a variant's preset fields are in the class too
    (:func:`method_option_fields` leaves them out).
    """
    return _lookup(name)[0].config_class


def method_option_fields(name: str) -> set[str]:
    """Config fields a user may set for method (or variant) ``name`` (a variant's presets
    are not among them)."""
    cls, preset = _lookup(name)
    return {f.name for f in dataclasses.fields(cls.config_class)} - set(preset)


method_config_fields = method_option_fields  # the earlier name


def make_method(name: str, **settings) -> TrainingMethod:
    """Build a registered method (or variant) from its name and config fields.

    Raises:
        ValueError: unknown method name, a setting the method's config does not have, or a
            setting that contradicts a variant's preset.
    """
    cls, preset = _lookup(name)
    if preset:
        clashes = {k: v for k, v in settings.items() if k in preset and preset[k] != v}
        if clashes:
            raise ValueError(f"variant {name!r} fixes {preset}; it cannot take {clashes}")
        settings = {**settings, **preset}
    _check_settings(name, cls, settings)
    method = cls(cls.config_class(**settings))
    if name in _VARIANTS:
        method.variant = name
    return method


#: Config fields a run sets from its own choices, never as a method option: where they go.
RUN_CHOICE_FIELDS = {"rank": "method.rank (--rank)", "seed": "the run's seed (--seed)",
                     "target_modules": "method.target_modules (--target_modules)",
                     "exclude_modules": "method.exclude_modules (--exclude_modules)"}


def option_types() -> dict[str, Any]:
    """Every method option of the registry and its annotation (the run choices excepted)."""
    types: dict[str, Any] = {}
    for cls, _ in (*((c, {}) for c in _REGISTRY.values()), *_VARIANTS.values()):
        for name, annotation in field_types(cls.config_class).items():
            if name not in RUN_CHOICE_FIELDS:
                types.setdefault(name, annotation)
    return types


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Method options (``{"sampler": "uniform"}``) checked by name and type for any method.

    A name must be an option of at least one registered method; a value must have that
    option's type (see :mod:`.._util.fields`; ``"true"``/``"false"`` become booleans). Ranges
    and choices are the method config's checks, run when a method is built.

    Returns:
        The options with converted values.

    Raises:
        ValueError: every unknown name at once with the allowed ones, a run choice given as
            an option (naming where it goes), or a value of the wrong type.
    """
    if not isinstance(options, Mapping):
        raise ValueError(f"method options {options!r} must be a mapping of option names to "
                         "values (a [method.options] section)")
    types = option_types()
    misplaced = sorted(str(k) for k in options if k in RUN_CHOICE_FIELDS)
    if misplaced:
        raise ValueError(f"method option(s) {misplaced} are run choices, not options: set "
                         + "; ".join(f"{k} as {RUN_CHOICE_FIELDS[k]}" for k in misplaced))
    unknown = sorted(str(k) for k in options if k not in types)
    if unknown:
        raise ValueError(f"unknown method option(s) {unknown}; allowed: "
                         f"{', '.join(sorted(types))}")
    return {k: check_value(k, v, types[k]) for k, v in options.items()}


def method_for_run(name: str, *, rank: int | None = None, seed: int | None = None,
                   interval: int | None = None, **options) -> TrainingMethod:
    """Build method (or variant) ``name`` from a run's common choices and its own options.

    Args:
        name: a registered method or variant.
        rank: set as ``rank`` if the method's config has that field (None: its default).
        seed: set as ``seed`` likewise.
        interval: steps between subspace refreshes, put into the method's
            ``refresh_interval_field`` (SST's ``iteration_interval``, ReLoRA*'s
            ``merge_interval``, GaLore's ``update_proj_gap``) unless ``options`` sets that
            field itself; ignored by a method without one (full, lora).
        options: other config fields of the method.

    Raises:
        ValueError: unknown method, an option the method does not have (naming it and the
            method's fields), a bad value, or an option contradicting a variant's preset.
    """
    config_class = method_config_class(name)
    fields = method_option_fields(name)
    settings = dict(options)
    for key, value in (("rank", rank), ("seed", seed)):
        if value is not None and key in fields:
            settings[key] = value
    refresh = config_class.refresh_interval_field
    if interval is not None and refresh in fields and refresh not in options:
        settings[refresh] = interval
    return make_method(name, **settings)


def method_from_state(state: dict[str, Any]) -> TrainingMethod:
    """Rebuild a method (config and step) from :meth:`TrainingMethod.state_dict`."""
    method = make_method(state["method"], **state["config"])
    method.load_state_dict(state)
    return method
