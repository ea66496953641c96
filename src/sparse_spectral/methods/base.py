"""The training-method life cycle and its registry.

Every method (full, sst, and the baselines of later issues) is one object::

    method = make_method("sst", rank=16, iteration_interval=50)
    model = method.prepare(model)              # replace target layers, freeze what must be frozen
    optimizer = method.build_optimizer(model, lr=1e-3)
    ... loss.backward(); optimizer.step(); method.after_step(step, optimizer)
    dense = method.merge(model)                # plain dense model (a copy)

Tasks, the training loop, the CLI and checkpoints talk to methods only through this
interface.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..spectral.optim import SlotAdamW
from ..training.schedules import jagged_cosine_lambda, warmup_cosine_lambda
from ..targeting import find_target_modules, linear_shape, replace_module

TargetSpec = str | list[str] | None


def check_rank_fits(name: str, module: nn.Module, rank: int) -> None:
    """Raise unless ``1 <= rank <= min(m, n)`` for the linear layer ``name``."""
    m, n = linear_shape(module)
    if rank > min(m, n):
        raise ValueError(f"rank={rank} is out of range for layer {name!r} of shape "
                         f"(m={m}, n={n}): it must be in [1, min(m, n) = {min(m, n)}]")


@dataclass
class MethodConfig:
    """Settings shared by every method."""

    target_modules: TargetSpec = field(
        default="all-linear",
        metadata={"help": "Modules the method replaces: a regex (full match on the dotted "
                  "name), a list of name suffixes, or 'all-linear' (every linear layer but "
                  "the output head)."},
    )
    exclude_modules: TargetSpec = field(
        default=None, metadata={"help": "Modules never replaced; same forms as target_modules."}
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingMethod:
    """Base class: ``full`` training is this life cycle with nothing replaced."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None):
        self.config = config if config is not None else self.config_class()
        self.step = 0

    # --------------------------------------------------------------- life cycle
    def prepare(self, model: nn.Module) -> nn.Module:
        """Reshape ``model`` in place for this method and return it."""
        return model

    def param_groups(self, model: nn.Module, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer param groups: dense weights (decayed), 1-D tensors (not decayed).

        Methods with special parameters put them in groups of their own.
        """
        decay, no_decay = [], []
        for _, p in self._dense_trainable(model):
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [
            {"name": "decay", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def build_optimizer(self, model: nn.Module, optimizer_cls=None, lr: float = 1e-3,
                        weight_decay: float = 0.0, **kwargs) -> torch.optim.Optimizer:
        """Build an optimizer over :meth:`param_groups` (default :class:`SlotAdamW`)."""
        optimizer_cls = optimizer_cls or SlotAdamW
        return optimizer_cls(self.param_groups(model, weight_decay), lr=lr, **kwargs)

    def after_step(self, step: int, optimizer=None) -> None:
        """Run the method's schedule after optimizer step number ``step`` (1-based)."""
        self.step = int(step)

    def lr_lambda(self, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1):
        """The learning-rate multiplier this method trains with (for ``LambdaLR``).

        Linear warm-up then cosine decay to ``min_lr_ratio``. Methods that restart optimizer
        state periodically (:meth:`restart_cycle`) re-warm the learning rate over
        ``config.restart_warmup_steps`` after each restart when that setting is positive
        (ReLoRA's "jagged cosine").
        """
        cycle = self.restart_cycle()
        rewarm = getattr(self.config, "restart_warmup_steps", 0)
        if cycle and rewarm:
            return jagged_cosine_lambda(total_steps, warmup_steps, min_lr_ratio,
                                        cycle_length=cycle, restart_warmup_steps=rewarm)
        return warmup_cosine_lambda(total_steps, warmup_steps, min_lr_ratio)

    def restart_cycle(self) -> int | None:
        """Steps between the method's optimizer-state restarts, or None if it has none."""
        return None

    def merge(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` made of plain dense layers."""
        return copy.deepcopy(model)

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

    def _dense_trainable(self, model: nn.Module):
        special = self._special_parameters(model)
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in special:
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

    def prepare(self, model: nn.Module) -> nn.Module:
        """Replace every target in place (all checked before any is touched)."""
        cfg = self.config
        targets = find_target_modules(model, cfg.target_modules, cfg.exclude_modules)
        for name, module in targets:
            check_rank_fits(name, module, cfg.rank)
        for index, (name, module) in enumerate(targets):
            replace_module(model, name, self.convert_layer(index, module))
        return self.attach(model)

    def attach(self, model: nn.Module) -> nn.Module:
        """Bind this method to an already converted model (e.g. after loading)."""
        self.layers = self.converted_layers(model)
        if not self.layers:
            raise ValueError(f"model has no {self.layer_type.__name__} layer; call prepare() first")
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


def method_config_fields(name: str) -> set[str]:
    """Config fields a user may set for method (or variant) ``name``."""
    if name in _VARIANTS:
        cls, preset = _VARIANTS[name]
        return {f.name for f in dataclasses.fields(cls.config_class)} - set(preset)
    if name in _REGISTRY:
        return {f.name for f in dataclasses.fields(_REGISTRY[name].config_class)}
    raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")


def make_method(name: str, **settings) -> TrainingMethod:
    """Build a registered method (or variant) from its name and config fields.

    Raises:
        ValueError: unknown method name, a setting the method's config does not have, or a
            setting that contradicts a variant's preset.
    """
    if name in _VARIANTS:
        cls, preset = _VARIANTS[name]
        clashes = {k: v for k, v in settings.items() if k in preset and preset[k] != v}
        if clashes:
            raise ValueError(f"variant {name!r} fixes {preset}; it cannot take {clashes}")
        settings = {**settings, **preset}
    elif name in _REGISTRY:
        cls = _REGISTRY[name]
    else:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available_methods())}")
    _check_settings(name, cls, settings)
    return cls(cls.config_class(**settings))


def method_from_state(state: dict[str, Any]) -> TrainingMethod:
    """Rebuild a method (config and step) from :meth:`TrainingMethod.state_dict`."""
    method = make_method(state["method"], **state["config"])
    method.load_state_dict(state)
    return method
