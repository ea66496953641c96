"""Composed run settings: shared sections nested in each task's settings.

Every task's settings dataclass (``tasks/*.py``) keeps only its own fields and nests the
shared sections below (``optim``, ``schedule``, ``eval``, ``output``, ``method``); a task
whose schedule or evaluation differs (translation's inverse-sqrt schedule, graph's early
stopping) nests its own class under the same section name.

One generic :func:`from_dict` builds any of them from nested mappings (TOML/YAML sections:
``[optim] lr = 1e-3``) or flat keys (``lr = 1e-3``: every field name is unique across a
task's sections, so a flat key names one field), and names every unknown key with the
allowed ones in one error. Field metadata carries the help text and, where the community
spelling differs from the field name, the flag (``metadata={"flag": "iteration_interval"}``).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._util.checks import is_int
from .._util.fields import Checked

__all__ = ["EvalSettings", "check_seed", "MethodChoice", "OptimSettings", "OutputSettings",
           "RuntimeSettings", "ScheduleSettings", "TaskSettings", "field_paths", "flag_name",
           "from_dict", "help_of", "is_section", "nest", "section_names", "to_flat_dict"]


def _help(text: str, **more) -> dict[str, Any]:
    return {"help": text, **more}


def _check_positive_int(owner: object, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(owner, name)
        if not is_int(value) or value < minimum:
            raise ValueError(f"{name}={value!r} must be an int >= {minimum}")


def check_seed(name: str, value: int) -> None:
    """Seeds are ints in ``[0, 2**32)``: every generator the package seeds takes them
    (numpy's ``RandomState`` refuses more)."""
    if not 0 <= value < 2**32:
        raise ValueError(f"{name}={value!r} must be an int in [0, 2**32)")


@dataclass
class OptimSettings(Checked):
    """The optimizer's settings (flag names of the GaLore/ReLoRA scripts)."""

    lr: float | None = field(default=1e-3, metadata=_help("peak learning rate"))
    weight_decay: float | None = field(default=0.0, metadata=_help("AdamW weight decay"))
    grad_clip: float | None = field(
        default=1.0, metadata=_help("clip the global gradient norm at this value (0: no clip)"))
    divergence_factor: float = field(default=10.0, metadata=_help(
        "stop the run when the train loss exceeds this many times its best so far and the "
        "first step's (0: off; a NaN/inf loss or figure always stops it)"))

    def validate(self):
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be >= 0 (0: no clipping)")
        from .divergence import check_factor

        check_factor(self.divergence_factor)


@dataclass
class ScheduleSettings(Checked):
    """Steps and the warm-up cosine schedule (the method adds its restart factor)."""

    num_training_steps: int = field(default=1000, metadata=_help("optimizer steps"))
    warmup_steps: int = field(default=100, metadata=_help("linear warm-up steps"))
    min_lr_ratio: float = field(
        default=0.1, metadata=_help("cosine decay ends at this share of the peak lr"))
    epochs: float | None = field(
        default=None, metadata=_help("train this many epochs (overrides num_training_steps)"))

    def validate(self):
        _check_positive_int(self, "num_training_steps")
        _check_positive_int(self, "warmup_steps", minimum=0)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r} must be > 0 (or None to use "
                             "num_training_steps)")


@dataclass
class EvalSettings(Checked):
    """How often the loop evaluates and logs."""

    eval_every: int = field(default=100, metadata=_help("steps between evaluations"))
    log_every: int = field(default=10, metadata=_help("steps between training-metric lines"))

    def validate(self):
        _check_positive_int(self, "eval_every", "log_every", minimum=0)


@dataclass
class OutputSettings(Checked):
    """Where a run writes and how often it checkpoints."""

    output_dir: str = field(default="runs/run", metadata=_help("run folder"))
    save_every: int = field(
        default=0, metadata=_help("steps between checkpoints (0: only the last step)"))
    tensorboard: bool = field(default=False, metadata=_help("also log to TensorBoard"))
    overwrite: bool = field(default=False, metadata=_help(
        "a new run may replace the run already in output_dir (its files are removed first)"))

    def validate(self):
        _check_positive_int(self, "save_every", minimum=0)
        if not isinstance(self.overwrite, bool):
            raise ValueError(f"overwrite={self.overwrite!r} must be true or false")


@dataclass
class MethodChoice(Checked):
    """The training method and the choices every method shares (rank, refresh interval)."""

    name: str = field(default="sst", metadata=_help(
        "full, lora, relora, galore, apollo, apollo_mini, sst or an SST variant (see "
        "`sst methods`)",
        flag="method"))
    rank: int = field(default=16, metadata=_help(
        "r: SST's active vector pairs, LoRA/ReLoRA*'s, GaLore's and APOLLO's rank "
        "(APOLLO-Mini: always 1)"))
    interval: int | None = field(default=None, metadata=_help(
        "steps between subspace refreshes: SST's T3, ReLoRA*'s merge interval and GaLore's "
        "and APOLLO's projection gap follow it unless set themselves (default: each "
        "method's own)",
        flag="iteration_interval"))
    target_modules: str | list[str] | None = field(default=None, metadata=_help(
        "modules the method replaces: regex (full match), comma-separated name suffixes or "
        "all-linear (default: the task's)"))
    exclude_modules: str | list[str] | None = field(default=None, metadata=_help(
        "modules never replaced; same forms (default: the task's)"))
    options: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "method options by config field (e.g. sampler, merge_interval, update_proj_gap)"))

    def validate(self):
        from ..methods import available_methods
        from ..methods.base import check_options

        if self.name not in available_methods():
            raise ValueError(f"unknown method(s) {[self.name]}; available: "
                             f"{', '.join(available_methods())}")
        _check_positive_int(self, "rank")
        if "iteration_interval" in self.options:  # old configs: SST's T3 was an option
            self.options = dict(self.options)
            given = self.options.pop("iteration_interval")
            if self.interval is None:
                self.interval = given
        # Every name an option of some method, every value of its type (ranges: the
        # method's config, checked by runner.check_choices before a run starts).
        self.options = check_options(self.options)
        if self.interval is not None:
            _check_positive_int(self, "interval")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str) and "," in value:  # a flag's list of suffixes
                setattr(self, name, [part.strip() for part in value.split(",") if part.strip()])


@dataclass
class RuntimeSettings(Checked):
    """Where, in which precision and whether compiled the run trains (:mod:`.device`,
    :mod:`.compile`; the backend is checked when the run starts)."""

    device: str = field(default="auto", metadata=_help(
        "auto (CUDA when present), cpu, cuda or cuda:N"))
    precision: str = field(default="fp32", metadata=_help(
        "fp32, bf16-mixed (fp32 parameters, bf16 autocast), bf16 (bf16 parameters) or "
        "fp16-mixed (fp32 parameters, float16 autocast, loss scaling)"))
    compile: bool = field(default=False, metadata=_help(
        "compile the converted model with torch.compile (whole model, one graph)"))
    compile_backend: str = field(default="inductor", metadata=_help(
        "torch.compile backend: inductor, or eager / aot_eager (no compiler needed); "
        "see torch._dynamo.list_backends()"))
    parallel: str = field(default="auto", metadata=_help(
        "auto (DDP when launched by torchrun, else one process), ddp (DDP; needs torchrun) or "
        "fsdp2 (FSDP2 fully_shard; needs torchrun; not for galore, apollo, apollo_mini)"))
    dist_timeout_s: float = field(default=1800.0, metadata=_help(
        "under torchrun: seconds a collective waits for the other ranks before failing"))

    def validate(self):
        from .device import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} is unknown; allowed: "
                             f"{', '.join(PRECISIONS)}")
        from .distributed import PARALLEL_MODES

        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel={self.parallel!r} is unknown; allowed: "
                             f"{', '.join(PARALLEL_MODES)}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s={self.dist_timeout_s!r} must be a number of "
                             "seconds > 0")
        if not self.compile_backend:
            raise ValueError(f"compile_backend={self.compile_backend!r} must be a backend "
                             "name (e.g. inductor, aot_eager)")


@dataclass
class TaskSettings(Checked):
    """Fields and sections every task has; each task's settings derive from this."""

    seed: int = field(default=0, metadata=_help("seed of initialisation, data order, sampler"))
    method: MethodChoice = field(default_factory=MethodChoice)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    #: Old flat keys and where they live now: ``{"method_options": "method.options"}``.
    LEGACY_KEYS: typing.ClassVar[dict[str, str]] = {"method_options": "method.options"}
    #: What a ``None`` default means, by field, where the task fills it in (``--help``).
    DEFAULT_NOTES: typing.ClassVar[dict[str, str]] = {}

    def validate(self):
        check_seed("seed", self.seed)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "settings"):
        """:func:`from_dict` for this class: ``LMSettings.from_dict({"lr": 3e-3})``."""
        return from_dict(cls, values, source)


# ---------------------------------------------------------------------- introspection
def is_section(f: dataclasses.Field) -> bool:
    """A field whose value is a nested settings dataclass (its default factory builds one)."""
    return f.default_factory is not dataclasses.MISSING and \
        dataclasses.is_dataclass(f.default_factory())


@functools.cache
def section_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if is_section(f))


def _section_class(cls: type, name: str) -> type:
    return next(type(f.default_factory()) for f in dataclasses.fields(cls) if f.name == name)


@functools.cache
def field_paths(cls: type) -> dict[str, tuple[str | None, dataclasses.Field]]:
    """``{field name: (section or None, field)}`` for every leaf field of ``cls``.

    Cached per class (it builds each section's default to read its fields); do not mutate.

    Raises:
        TypeError: two sections define the same field name (flat keys would be ambiguous).
    """
    paths: dict[str, tuple[str | None, dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        items = ([(f.name, g) for g in dataclasses.fields(f.default_factory())]
                 if is_section(f) else [(None, f)])
        for section, leaf in items:
            if leaf.name in paths:
                raise TypeError(f"{cls.__name__}: field {leaf.name!r} is defined twice")
            paths[leaf.name] = (section, leaf)
    return paths


def flag_name(f: dataclasses.Field) -> str:
    """The command-line spelling of a field (``metadata["flag"]`` or its name)."""
    return f.metadata.get("flag", f.name)


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


# ---------------------------------------------------------------------- building
def nest(cls: type, values: Mapping[str, Any], source: str = "settings") -> dict[str, Any]:
    """``values`` in canonical nested form: ``{field: v, section: {field: v}}``.

    Flat keys, flag spellings (``iteration_interval``, ``schedule``), legacy keys
    (``method_options``) and a string ``method`` (the name) are moved to their sections, so
    that two sources merge key by key (``{"lr": 1}`` and ``{"optim": {"lr": 2}}`` name the
    same field).

    Raises:
        ValueError: every unknown key at once, with the allowed ones.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: settings must be a mapping of names to values (a "
                         f"table / sections), not {type(values).__name__}")
    nested: dict[str, dict[str, Any]] = {name: {} for name in section_names(cls)}
    top: dict[str, Any] = {}
    unknown: list[str] = []
    paths = field_paths(cls)
    spellings = {flag_name(f): name for name, (_, f) in paths.items()}
    legacy = getattr(cls, "LEGACY_KEYS", {})
    for key, value in values.items():
        if key in nested and isinstance(value, Mapping):
            inner_fields = {flag_name(f): f.name
                            for f in dataclasses.fields(_section_class(cls, key))}
            inner_fields.update({name: name for name in inner_fields.values()})
            for inner, inner_value in value.items():
                if inner in inner_fields:
                    nested[key][inner_fields[inner]] = inner_value
                else:
                    unknown.append(f"{key}.{inner}")
            continue
        if key == "method" and isinstance(value, str):
            nested["method"]["name"] = value
            continue
        if key in nested and key not in spellings:  # MT's "schedule" is also a flag
            raise ValueError(f"{source}: {key} must be a section ([{key}] in TOML, a mapping "
                             f"in YAML) of its settings, not {value!r}")
        if key in legacy:
            section, name = legacy[key].split(".")
            nested[section][name] = value
            continue
        name = spellings.get(key, key)
        if name not in paths:
            unknown.append(key)
            continue
        section, _ = paths[name]
        (nested[section] if section else top)[name] = value
    if unknown:
        allowed = sorted({*paths, *(f"{s}.*" for s in nested), *legacy})
        raise ValueError(f"{source}: unknown setting(s) {sorted(unknown, key=str)}; allowed: "
                         f"{', '.join(allowed)}")
    return {**top, **{name: given for name, given in nested.items() if given}}


def from_dict(cls: type, values: Mapping[str, Any], source: str = "settings"):
    """Build ``cls`` from nested sections and/or flat keys; defaults fill the rest.

    Args:
        cls: a task settings dataclass (derived from :class:`TaskSettings`).
        values: ``{"lr": 1e-3}``, ``{"optim": {"lr": 1e-3}}``, legacy keys
            (``method_options``) or a flag spelling (``method``, ``iteration_interval``); a
            string under ``method`` is the method name (see :func:`nest`).
        source: what the values came from, for error messages (``--config FILE``).

    Raises:
        ValueError: every unknown key at once, with the allowed ones; or a bad value (its
            field, what is allowed), prefixed by ``source`` when that is not empty.
    """
    values = nest(cls, values, source)
    sections = set(section_names(cls))
    defaults = cls()
    try:
        built = {name: dataclasses.replace(getattr(defaults, name), **given)
                 for name, given in values.items() if name in sections}
        top = {name: value for name, value in values.items() if name not in sections}
        return dataclasses.replace(defaults, **top, **built)
    except ValueError as err:
        raise ValueError(f"{source}: {err}" if source else str(err)) from None


def to_flat_dict(settings) -> dict[str, Any]:
    """Every leaf field under its flag spelling, sections flattened (results files).

    ``method.name`` becomes ``method``, ``method.interval`` ``iteration_interval`` and
    ``method.options`` ``method_options``: the keys results files have always had.
    """
    flat: dict[str, Any] = {}
    for name, (section, f) in field_paths(type(settings)).items():
        value = getattr(getattr(settings, section), name) if section else getattr(settings, name)
        key = "method_options" if (section, name) == ("method", "options") else flag_name(f)
        flat[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return flat
