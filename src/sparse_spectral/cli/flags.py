"""Command-line flags generated from the settings dataclasses and the method registry.

One flag per settings field, named by the field (or its ``metadata["flag"]``, the
community spelling: ``--iteration_interval``, ``--schedule``, ``--eval_freq``), with the
field's help text and the task's default in ``--help``; one flag per method option, from
the method config classes (``--galore_scale`` for GaLore's ``scale``); ``--set KEY=VALUE``
for any setting. Values merge as: dataclass defaults < ``--config`` file < ``--set`` <
flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

from ..training.config import field_paths, flag_name, from_dict, help_of, nest, section_names

#: Method config fields that are run choices (``--rank``, ``--seed``, ``--iteration_interval``,
#: ``--target_modules``, ``--exclude_modules``), not method options.
RUN_CHOICES = ("rank", "seed", "target_modules", "exclude_modules")
#: Method option dests are ``option.<field>``.
OPTION = "option."
#: Keys of a ``--config`` file that steer the command rather than define a run.
COMMAND_KEYS = ("methods", "method_lr", "seeds", "threads")


def parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(annotation: str):
    """An argparse ``type`` for a field annotation (a string: postponed annotations)."""
    optional = "None" in annotation
    if "bool" in annotation:
        base = parse_bool
    elif annotation.startswith(("list", "dict")) or "list[" in annotation:
        base = str  # comma-separated lists are parsed by the dataclass or the method
    elif annotation.startswith("int"):
        base = int
    elif annotation.startswith("float"):
        base = float
    else:
        base = str

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")  # argparse names it in errors
    return convert


def _value_kind(f: dataclasses.Field) -> dict[str, Any]:
    """``type``/``metavar`` of a field's flag; a bool flag alone means true (``--tensorboard``),
    ``--tensorboard false`` turns it off."""
    kind: dict[str, Any] = {"type": _converter(str(f.type)), "metavar": flag_name(f).upper()}
    if str(f.type).startswith("bool"):
        kind.update(nargs="?", const=True, metavar="BOOL")
    return kind


def _help_text(f: dataclasses.Field, default: Any) -> str:
    text = help_of(f)
    return text if "default" in text else f"{text} (default: {default})"


def _dest(section: str | None, name: str) -> str:
    return f"{section}.{name}" if section else name


def add_settings_flags(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """One ``--flag`` per leaf field of ``settings_class`` (``method.options`` excepted)."""
    defaults = settings_class()
    groups: dict[str | None, Any] = {None: parser.add_argument_group("task settings")}
    for name in section_names(settings_class):
        groups[name] = parser.add_argument_group(f"[{name}] settings")
    for name, (section, f) in field_paths(settings_class).items():
        if (section, name) == ("method", "options"):
            continue
        value = getattr(getattr(defaults, section), name) if section else getattr(defaults, name)
        flags = [f"--{flag_name(f)}"]
        if "_" in flags[0] and name.endswith("_dir"):
            flags.append(flags[0].replace("_", "-"))  # --data-dir, as the data loaders say
        groups[section].add_argument(*flags, dest=_dest(section, name),
                                     default=argparse.SUPPRESS,
                                     help=_help_text(f, settings_class.DEFAULT_NOTES.get(
                                         name, value)),
                                     **_value_kind(f))


def add_method_option_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per method option of every registered method (union of the configs).

    ``skip``: options whose flag the command uses otherwise (``sst ablate``'s
    ``--iterations_per_round`` lists T2 variants; ``--set method.options.NAME=...`` still
    sets the option).
    """
    from ..methods import available_methods, method_config_class

    takers: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for method in available_methods():
        config = method_config_class(method)
        refresh = getattr(config, "refresh_interval_field", None)
        for f in dataclasses.fields(config):
            if f.name in RUN_CHOICES or f.name in skip or (f.name == refresh ==
                                                            "iteration_interval"):
                continue
            takers.setdefault(f.name, (f, []))[1].append(method)
    group = parser.add_argument_group(
        "method options (an option no chosen method has is an error)")
    for name, (f, methods) in sorted(takers.items()):
        shown = sorted({m.split("-")[0] if m.startswith("sst-") else m for m in methods})
        group.add_argument(f"--{flag_name(f)}", dest=OPTION + name,
                           default=argparse.SUPPRESS,
                           help=f"{help_of(f)} [{', '.join(shown)}; default {f.default!r}]",
                           **_value_kind(f))


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="TOML or YAML file of settings (flags override it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any setting (repeatable; JSON values), e.g. --set lr=3e-3 "
                             "--set optim.weight_decay=0.1 --set method.options.sampler=uniform")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------------- reading them back
def load_config_file(path: str) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file")
    if file.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(file.read_text())
    if file.suffix in (".yaml", ".yml"):
        import yaml

        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path}: expected a mapping at the top level")
        return loaded
    raise ValueError(f"--config {path}: unknown format {file.suffix!r}; use .toml, .yaml or .yml")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as JSON, else text)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} must look like key=value (e.g. lr=3e-3)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, last = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part!r} is set twice")
        node[last] = value
    return out


def merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``more``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _warn_flat_keys(values: dict[str, Any], settings_class: type, source: str) -> None:
    paths = field_paths(settings_class)
    flat = [k for k, v in values.items()
            if not isinstance(v, dict) and k in paths and paths[k][0] is not None]
    if flat:
        warnings.warn(f"{source}: flat key(s) {sorted(flat)} are deprecated; put them in "
                      "their sections ([optim], [schedule], [eval], [output], [method], "
                      "[runtime]) as examples/ does", FutureWarning, stacklevel=3)


def settings_from_args(args: argparse.Namespace, settings_class: type,
                       extra_keys: tuple[str, ...] = COMMAND_KEYS,
                       config: dict[str, Any] | None = None):
    """``(settings, command_values, explicit)`` from defaults < config < --set < flags.

    Args:
        config: settings already read from ``args.config`` (an ablation's ``[settings]``).

    Returns:
        settings: an instance of ``settings_class``.
        command_values: the ``COMMAND_KEYS`` found in the config file and flags.
        explicit: which of ``rank`` and ``interval`` were given at all, for the "does not
            apply to the chosen method" check (method options are checked by name).
    """
    values: dict[str, Any] = dict(config) if config is not None else {}
    if args.config and config is None:
        values = load_config_file(args.config)
        _warn_flat_keys({k: v for k, v in values.items() if k not in extra_keys},
                        settings_class, f"--config {args.config}")
    command = {k: values.pop(k) for k in extra_keys if k in values}
    source = f"--config {args.config}" if args.config else "settings"
    flags: dict[str, Any] = {}
    fields, sections = field_paths(settings_class), section_names(settings_class)
    for dest, value in vars(args).items():
        if dest.startswith(OPTION):
            flags.setdefault("method", {}).setdefault("options", {})[dest[len(OPTION):]] = value
        elif "." in dest:
            section, name = dest.split(".", 1)
            flags.setdefault(section, {})[name] = value
        elif dest in extra_keys and value is not None:
            command[dest] = value
        elif dest in fields and dest not in sections:
            flags[dest] = value
    layers = [nest(settings_class, values, source),
              nest(settings_class, parse_set(args.set), "--set"), flags]
    merged: dict[str, Any] = {}
    for layer in layers:  # later layers win, key by key
        merged = merge(merged, layer)
    return from_dict(settings_class, merged, source), command, _explicit_choices(merged)


def _explicit_choices(values: dict[str, Any]) -> set[str]:
    """Which of the shared method choices (``rank``, ``interval``) were given at all."""
    return {"rank", "interval"} & set(values.get("method", {}))
