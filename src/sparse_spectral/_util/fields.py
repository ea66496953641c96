"""Type checks of settings dataclasses, read from their annotations: one rule for all.

Every settings section, task settings class and method config derives from :class:`Checked`:
its ``__post_init__`` checks each field against the field's annotation, then runs the class's
own range and choice checks (:meth:`Checked.validate`). The rules:

* ``int``: an int (not a bool, not a float such as ``8.0``).
* ``float``: an int or a float, finite (no NaN, no infinity), not a bool.
* ``bool``: ``True``/``False``, or the strings ``"true"``/``"false"`` (any case), which are
  converted; anything else (``"no"``, ``1``) is refused rather than read as truthy.
* ``str``: a string. ``list[X]``: a list (or tuple) of X, or a comma-separated string
  (``"512,512"``), converted to a list. ``dict``: a mapping. ``X | None``: None too.
  ``Any``: anything.

A refused value raises :class:`ValueError` naming the field, the value, its type and what is
allowed: ``lr=True must be a number (got bool)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from .checks import is_int

__all__ = ["Checked", "check_fields", "check_value", "describe", "field_types"]

_BOOL_TEXT = {"true": True, "false": False}


class Checked:
    """Base of every settings dataclass: field types are checked before :meth:`validate`."""

    def __post_init__(self):
        check_fields(self)
        self.validate()

    def validate(self) -> None:
        """The class's own range, choice and cross-field checks (override; chain ``super``)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls``; one that cannot be resolved (a name local to the
    function that defined the class) is ``Any``: not checked."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
        for klass in reversed(cls.__mro__):
            scope = vars(__import__(klass.__module__, fromlist=["_"]))
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                try:
                    hints[name] = typing.get_type_hints(
                        type("_", (), {"__annotations__": {name: annotation}}), scope)[name]
                except (NameError, TypeError, SyntaxError):
                    hints[name] = Any
        return hints


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of dataclass ``cls`` (cached; do not mutate)."""
    hints = _hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def check_fields(obj) -> None:
    """Check (and normalise, see the module docstring) every field of dataclass ``obj``.

    Raises:
        ValueError: the first field whose value its annotation does not allow.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        checked = check_value(f.name, value, hints.get(f.name, Any))
        if checked is not value:
            setattr(obj, f.name, checked)


def check_value(name: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` (converted where the rules say so).

    Raises:
        ValueError: ``name=value must be <what annotation allows> (got <type>)``.
    """
    ok, converted = _match(value, annotation)
    if ok:
        return converted
    shown = value if not isinstance(value, str) or len(value) < 80 else value[:77] + "..."
    raise ValueError(f"{name}={shown!r} must be {describe(annotation)} (got "
                     f"{type(value).__name__})")


def _options(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None`` -> ``(int, NoneType)``)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _match(value: Any, annotation: Any) -> tuple[bool, Any]:
    """``(allowed, converted value)`` for one annotation (a union: the first member that
    takes the value unchanged, else the first that takes it converted)."""
    members = _options(annotation)
    if len(members) > 1:
        converted = None
        for member in members:
            ok, result = _match(value, member)
            if ok and result is value:
                return True, value
            if ok and converted is None:
                converted = (result,)
        return (True, converted[0]) if converted else (False, value)
    if annotation is Any:
        return True, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in _BOOL_TEXT:
            return True, _BOOL_TEXT[value.lower()]
        return False, value
    if annotation is int:
        return is_int(value), value
    if annotation is float:
        number = (is_int(value) or isinstance(value, float)) and not isinstance(value, bool)
        return number and math.isfinite(value), value
    if annotation is str:
        return isinstance(value, str), value
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if item is int:
                if not all(p.lstrip("+-").isdigit() for p in parts):
                    return False, value
                parts = [int(p) for p in parts]
            value = parts
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_match(v, item) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict or annotation is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value  # an annotation these rules do not cover (none in the package)


def describe(annotation: Any) -> str:
    """What an annotation allows, in words: ``int | None`` -> ``"None or an int"``."""
    members = _options(annotation)
    words = [_word(m) for m in members if m is not type(None)]
    if type(None) in members:
        words.insert(0, "None")
    return " or ".join(words)


def _word(annotation: Any) -> str:
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an int"
    if annotation is float:
        return "a finite number"
    if annotation is str:
        return "a string"
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        kind = {int: "ints", str: "strings"}.get(item, "values")
        return f"a list of {kind} (or comma-separated)"
    if typing.get_origin(annotation) is dict or annotation is dict:
        return "a mapping (a table / section)"
    return getattr(annotation, "__name__", str(annotation))
