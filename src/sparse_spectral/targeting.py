"""Choose which submodules of a model a training method replaces.

The matching rules follow huggingface peft's ``target_modules`` /
``exclude_modules`` semantics so that configs are portable:

* a ``str`` (other than ``"all-linear"``) is a regular expression that must
  :func:`re.fullmatch` the module's dotted name;
* a list/tuple/set of strings matches a module whose name equals an entry or
  ends with ``"." + entry`` (whole name components only);
* ``"all-linear"`` selects every linear module except the model's heads: the output
  embedding (``get_output_embeddings()``, else a module named ``lm_head``) and task heads
  (modules named ``classifier``, ``score``, ``qa_outputs`` or ``classification_head``, and
  every linear inside them).

Why the heads stay dense (peft is the reference): peft's ``all-linear`` drops the output
embedding, and for classification puts the ``classifier``/``score`` head in
``modules_to_save`` (trained densely). A task head is small and task-specific; with a few
labels it is narrower than any useful rank (a 3-label head has ``min(m, n) = 3``). Layers
of the backbone stay targets, BERT's pooler and MLM transform included (peft targets them
too). A head named in an explicit ``target_modules`` is still a target.

Only linear modules (:func:`~sparse_spectral.linear.is_linear`: :class:`torch.nn.Linear`
and GPT-2's ``Conv1D``) can be targets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

# Kept importable from here for methods/base.py and methods/galore.py until they import
# them from .linear (where the linear module kinds live); nothing else should.
from .linear import is_conv1d, is_linear, linear_shape  # noqa: F401

__all__ = [
    "TASK_HEAD_NAMES",
    "find_target_modules",
    "replace_module",
]

ALL_LINEAR = "all-linear"

# Name used to spot the output head when the model cannot tell us itself.
_HEAD_NAME = "lm_head"

# Task heads by name (transformers' conventions): sequence/token classification
# (``classifier``, ``score``; peft's SEQ_CLS_HEAD_NAMES), extractive QA (``qa_outputs``) and
# the BART/T5 classification head module (``classification_head``).
TASK_HEAD_NAMES = ("classifier", "score", "qa_outputs", "classification_head")

# How many module names a "nothing matched" error lists before truncating.
_MAX_LISTED_NAMES = 20

_Matcher = Callable[[str], bool]


# --------------------------------------------------------------------------
# Pattern handling
# --------------------------------------------------------------------------


def _describe_forms(arg_name: str, allow_none: bool) -> str:
    forms = "a regex str, 'all-linear', or a list/tuple/set of str"
    if arg_name == "exclude_modules":
        forms = "a regex str or a list/tuple/set of str"
    return forms + (", or None" if allow_none else "")


def _regex_matcher(pattern: str, arg_name: str) -> _Matcher:
    """Compile ``pattern`` into a full-match predicate on module names."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"{arg_name}={pattern!r} is not a valid regular expression: {err}"
        ) from err
    return lambda name: compiled.fullmatch(name) is not None


def _suffix_matcher(entries: Iterable[str]) -> _Matcher:
    """Match names equal to an entry or ending in ``"." + entry``.

    Requiring the dot keeps matches on whole name components, so ``"proj"``
    does not match ``"q_proj"``.
    """
    entries = tuple(entries)
    suffixes = tuple("." + entry for entry in entries)
    return lambda name: name in entries or name.endswith(suffixes)


def _make_matcher(spec: object, arg_name: str, allow_none: bool) -> _Matcher | None:
    """Turn a user pattern into a name predicate, validating its type.

    Args:
        spec: The user's ``target_modules`` or ``exclude_modules`` value.
        arg_name: Argument name, used in error messages.
        allow_none: Whether ``None`` is accepted (meaning "no pattern").

    Returns:
        A predicate on dotted module names, or None for ``spec is None``.

    Raises:
        TypeError: If ``spec`` has an unsupported type.
        ValueError: If ``spec`` is an invalid regular expression.
    """
    if spec is None and allow_none:
        return None
    if isinstance(spec, str):
        return _regex_matcher(spec, arg_name)
    if isinstance(spec, (list, tuple, set, frozenset)):
        bad = [entry for entry in spec if not isinstance(entry, str)]
        if not bad:
            return _suffix_matcher(spec)
        raise TypeError(
            f"{arg_name}={spec!r} contains non-str entries {bad!r}; "
            f"expected {_describe_forms(arg_name, allow_none)}"
        )
    raise TypeError(
        f"{arg_name}={spec!r} has unsupported type {type(spec).__name__}; "
        f"expected {_describe_forms(arg_name, allow_none)}"
    )


# --------------------------------------------------------------------------
# Target discovery
# --------------------------------------------------------------------------


def _is_all_linear(spec: object) -> bool:
    # isinstance first: `==` on arbitrary objects (e.g. arrays) need not give a bool.
    return isinstance(spec, str) and spec == ALL_LINEAR


def _output_head(model: nn.Module) -> nn.Module | None:
    """Return the model's output head module as reported by the model, if any."""
    getter = getattr(model, "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        head = getter()
    except NotImplementedError:  # some base models declare but do not implement it
        return None
    return head if isinstance(head, nn.Module) else None


def _in_task_head(name: str) -> bool:
    """Whether dotted ``name`` is a task head or lies inside one (a component matches)."""
    return any(part in TASK_HEAD_NAMES for part in name.split("."))


def _head_predicate(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """Build a predicate that recognises the model's heads (output embedding, task heads).

    For the output embedding the model's own ``get_output_embeddings()`` is
    authoritative; models that do not provide it fall back to the conventional
    ``lm_head`` name. Task heads go by name (:data:`TASK_HEAD_NAMES`) in every model.
    """
    head = _output_head(model)
    if head is not None:
        return lambda name, module: module is head or _in_task_head(name)
    return lambda name, module: name.rsplit(".", 1)[-1] == _HEAD_NAME or _in_task_head(name)


def _all_linear_matcher(model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """Match every linear module except the heads."""
    is_head = _head_predicate(model)
    return lambda name, module: is_linear(module) and not is_head(name, module)


def _named_submodules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """List submodules in ``named_modules()`` order, without the root.

    The root has the empty name and cannot be replaced in place.
    """
    return [(name, module) for name, module in model.named_modules() if name]


def _no_match_error(
    model: nn.Module, target_modules: object, exclude_modules: object
) -> ValueError:
    """Build the error raised when no module is selected."""
    linear_names = [name for name, module in _named_submodules(model) if is_linear(module)]
    if not linear_names:
        available = "the model has no linear modules"
    else:
        shown = ", ".join(linear_names[:_MAX_LISTED_NAMES])
        more = len(linear_names) - _MAX_LISTED_NAMES
        suffix = f", ... ({more} more)" if more > 0 else ""
        available = f"available linear modules: {shown}{suffix}"
    return ValueError(
        f"no modules matched target_modules={target_modules!r} "
        f"with exclude_modules={exclude_modules!r}; {available}"
    )


def _check_linear(targets: list[tuple[str, nn.Module]], target_modules: object) -> None:
    """Reject non-linear matches: the user's pattern over-matched."""
    for name, module in targets:
        if not is_linear(module):
            raise ValueError(
                f"target_modules={target_modules!r} matched module {name!r} of type "
                f"{type(module).__name__}, but only nn.Linear and Conv1D modules can "
                "be targeted; make the pattern more specific or use exclude_modules"
            )


def find_target_modules(
    model: nn.Module,
    target_modules: str | list[str] | tuple[str, ...] | set[str] = ALL_LINEAR,
    exclude_modules: str | list[str] | tuple[str, ...] | set[str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Select the submodules of ``model`` a training method should replace.

    Args:
        model: The model to search.
        target_modules: ``"all-linear"`` (every linear module except the output
            embedding and task heads: see the module docstring), a regex that must
            fully match a dotted module name, or a list/tuple/set of names matched
            exactly or as a dotted suffix.
        exclude_modules: Modules to drop from the selection, in the same regex
            or list forms as ``target_modules``; None excludes nothing.

    Returns:
        ``(name, module)`` pairs in ``model.named_modules()`` order.

    Raises:
        TypeError: If a pattern has an unsupported type.
        ValueError: If a regex is invalid, a pattern selects a non-linear
            module, or nothing is selected.
    """
    if _is_all_linear(exclude_modules):
        # Excluding every linear module can never leave a target.
        raise ValueError("exclude_modules='all-linear' would exclude every target")
    is_excluded = _make_matcher(exclude_modules, "exclude_modules", allow_none=True)

    if _is_all_linear(target_modules):
        is_target = _all_linear_matcher(model)
    else:
        name_matches = _make_matcher(target_modules, "target_modules", allow_none=False)
        is_target = lambda name, module: name_matches(name)  # noqa: E731

    targets = [
        (name, module)
        for name, module in _named_submodules(model)
        if is_target(name, module) and not (is_excluded and is_excluded(name))
    ]
    _check_linear(targets, target_modules)
    if not targets:
        raise _no_match_error(model, target_modules, exclude_modules)
    return targets


# --------------------------------------------------------------------------
# Replacement
# --------------------------------------------------------------------------


def _child(parent: nn.Module, part: str, path: str) -> nn.Module:
    """Return the registered child ``part`` of ``parent`` or raise KeyError."""
    # Look in _modules rather than getattr so parameters, buffers and plain
    # attributes are not mistaken for submodules.
    child = parent._modules.get(part)
    if child is None:
        raise KeyError(f"model has no submodule at path {path!r} (missing {part!r})")
    return child


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` with ``new_module``.

    Works through containers such as ``nn.ModuleList`` (``"layers.0.fc"``).

    Args:
        model: The model to modify in place.
        name: Dotted path of an existing submodule, as in ``named_modules()``.
        new_module: The module to install.

    Raises:
        KeyError: If no submodule exists at ``name``.
        TypeError: If ``new_module`` is not an ``nn.Module``.
    """
    if not isinstance(new_module, nn.Module):
        raise TypeError(f"new_module must be an nn.Module, got {type(new_module).__name__}")
    if not name:
        raise KeyError("cannot replace the root module (empty path '')")
    *parents, leaf = name.split(".")
    parent = model
    for part in parents:
        parent = _child(parent, part, name)
    _child(parent, leaf, name)  # existence check only
    setattr(parent, leaf, new_module)
