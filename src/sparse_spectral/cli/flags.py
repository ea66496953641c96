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
import io
import json
import math
import re
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
    """``true``/``false`` (any case): the one spelling of a boolean, as in config files."""
    lowered = str(text).lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _converter(annotation: str):
    """An argparse ``type`` for a field annotation (a string: postponed annotations)."""
    optional = "None" in annotation
    if "bool" in annotation:
        base = parse_bool
    elif annotation.startswith(("list", "dict")) or "list[" in annotation:
        base = str  # comma-separated lists are parsed by the settings' field checks
    elif annotation.startswith("int"):
        base = _parse_int
    elif annotation.startswith("float"):
        base = _parse_float
    else:
        base = str

    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return base(text)

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
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file.

    YAML is read as YAML 1.2 reads numbers (``1e-2`` is a float, not PyYAML's string) and
    a key given twice in one mapping is an error, as it is in TOML.

    Raises:
        ValueError: a missing file, an unknown suffix, a file that does not parse (with the
            parser's line and column) or that is not a mapping; every message names the file.
    """
    file = Path(path)
    label = f"--config {path}"
    if not file.is_file():
        raise ValueError(f"{label}: no such file")
    if file.suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"{label}: unknown format {file.suffix!r}; use .toml, .yaml or .yml")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{label}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if file.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{label}: not valid TOML: {err}") from None
    import yaml

    stream = io.StringIO(text)
    stream.name = str(path)  # PyYAML's marks name the file
    try:
        loaded = yaml.load(stream, Loader=_yaml_loader())  # a SafeLoader (see _yaml_loader)
    except yaml.YAMLError as err:
        raise ValueError(f"{label}: not valid YAML: {' '.join(str(err).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{label}: expected a mapping at the top level, got "
                         f"{type(loaded).__name__}")
    return loaded


# YAML 1.2's floats: 1e-2 and 1E5 too (PyYAML's YAML 1.1 pattern wants a dot: 1.0e-2).
_YAML_FLOAT = re.compile(r"""^[-+]?(?:
    [0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
  | \.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
  | [0-9][0-9_]*[eE][-+]?[0-9]+
  | \.(?:inf|Inf|INF)) $|^\.(?:nan|NaN|NAN)$""", re.X)


def _yaml_loader():
    """PyYAML's SafeLoader with YAML 1.2 floats and duplicate keys refused."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader's own error names an unhashable key
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    # A subclass's resolver table is its own copy; the float pattern replaces the 1.1 one.
    Loader.yaml_implicit_resolvers = {
        first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:float"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT,
                                 list("-+0123456789."))
    return Loader


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
                       config: dict[str, Any] | None = None, check=None):
    """``(settings, command_values, explicit)`` from defaults < config < --set < flags.

    Every error names where the bad value came from: ``--config FILE: lr=True must be ...``
    (or ``--set: ...``; a flag's error names the flag's field).

    Args:
        config: settings already read from ``args.config`` (an ablation's ``[settings]``).
        check: ``check(settings, command_values, explicit)``, the command's own checks of the
            built settings (e.g. :func:`~..training.runner.check_choices`); its errors are
            attributed to a layer as the settings' are.

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
    layers = {source: nest(settings_class, values, source),
              "--set": nest(settings_class, parse_set(args.set), "--set"),
              "": flags}  # a flag's error needs no label: the field is the flag's name
    merged: dict[str, Any] = {}
    for layer in layers.values():  # later layers win, key by key
        merged = merge(merged, layer)
    try:
        settings = from_dict(settings_class, merged, source="")
    except ValueError as err:
        blamed = _blame(str(err), layers, settings_class)
        blamed = source if blamed is None and args.config else blamed
        raise ValueError(f"{blamed}: {err}" if blamed else str(err)) from None
    explicit = _explicit_choices(merged)
    if check is not None:
        try:
            check(settings, command, explicit)
        except ValueError as err:
            blamed = _blame(str(err), layers, settings_class)
            raise ValueError(f"{blamed}: {err}" if blamed else str(err)) from None
    return settings, command, explicit


def _blame(message: str, layers: dict[str, dict[str, Any]], settings_class: type) -> str | None:
    """The layer that gave the value a settings error names: the last of ``--config FILE``,
    ``--set`` and the flags (``""``) that sets the field the message starts with (``lr=...``,
    ``--rank 4 ...``) or an option it quotes (``unknown method option(s) ['x']``); None if
    none does."""
    spellings = {flag_name(f): name for name, (_, f) in field_paths(settings_class).items()}
    head = re.match(r"-*([\w.]+)", message)
    names = [head.group(1).rsplit(".", 1)[-1]] if head else []
    names += re.findall(r"'(\w+)'", message.split("allowed:")[0])
    names = {spellings.get(n, n) for n in names}
    for label, layer in reversed(layers.items()):
        if names & _leaf_keys(layer):
            return label
    return None


def _leaf_keys(values: dict[str, Any]) -> set[str]:
    """Keys of ``values`` and its nested mappings whose values are not mappings themselves,
    plus the option names under ``options``."""
    keys = set()
    for key, value in values.items():
        if isinstance(value, dict):
            keys |= _leaf_keys(value) | (set(value) if key == "options" else set())
        else:
            keys.add(key)
    return keys


def _explicit_choices(values: dict[str, Any]) -> set[str]:
    """Which of the shared method choices (``rank``, ``interval``) were given at all."""
    return {"rank", "interval"} & set(values.get("method", {}))
