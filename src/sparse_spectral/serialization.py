"""Saving and loading converted models: safetensors weights plus a JSON method file.

A saved directory holds ``model.safetensors`` (every tensor of the converted model: dense
weights, singular values, active and frozen factors, selections) and ``method.json``
(method name, config, schedule state, versions). Nothing in it needs pickle, so it is safe
to load from untrusted sources. Files are written to a temporary name and moved into place,
so an interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ._util.atomic import atomic_write, atomic_write_json
from ._util.checks import is_int
from ._version import __version__
from .methods.base import TrainingMethod, method_from_state

MODEL_FILE = "model.safetensors"
METHOD_FILE = "method.json"
FORMAT_VERSION = 1


def save_pretrained(model: nn.Module, method: TrainingMethod, directory: str | os.PathLike) -> Path:
    """Save a converted ``model`` and ``method``'s state into ``directory``.

    Returns:
        The directory path.
    """
    directory = Path(directory)
    atomic_write(directory / MODEL_FILE, lambda tmp: save_model(model, tmp))
    atomic_write_json(directory / METHOD_FILE, {
        "format_version": FORMAT_VERSION,
        "sparse_spectral_version": __version__,
        "torch_version": str(torch.__version__),
        "method_state": method.state_dict(),
    })
    return directory


def load_pretrained(model: nn.Module,
                    directory: str | os.PathLike) -> tuple[nn.Module, TrainingMethod]:
    """Rebuild the method saved in ``directory`` and load its weights into ``model``.

    Args:
        model: the *unconverted* model with the same architecture as the saved one (its
            weights are overwritten).
        directory: a directory written by :func:`save_pretrained`.

    Returns:
        ``(model, method)``: the converted model holding the saved tensors and the method
        bound to it, ready to resume.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file that is broken (not JSON, truncated or garbage safetensors), of
            another format version, a method state that is incomplete or refused, or weights
            that do not fit ``model``; every message starts with the file's path.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / METHOD_FILE, directory / MODEL_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{directory} is not a sparse-spectral save: it needs "
                                f"{METHOD_FILE} and {MODEL_FILE}")
    state = _method_state(meta_path)
    try:
        method = method_from_state(state)
        model = method.prepare(model)
    except ValueError as err:
        raise ValueError(f"{meta_path}: {err}") from None
    try:
        load_model(model, weights_path, strict=True)
    except SafetensorError as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file (truncated or "
                         f"not one): {err}") from None
    except RuntimeError as err:  # missing, unexpected or differently shaped tensors
        raise ValueError(f"{weights_path}: its tensors do not fit this model: "
                         f"{' '.join(str(err).split())}") from None
    method.load_state_dict(state)
    return model, method


def _method_state(path: Path) -> dict:
    """``method_state`` of a ``method.json``, its shape checked (errors name ``path``)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r} is not "
                         f"supported (expected {FORMAT_VERSION})")
    state = meta.get("method_state")
    if not (isinstance(state, dict) and isinstance(state.get("method"), str)
            and isinstance(state.get("config"), dict) and is_int(state.get("step"))):
        raise ValueError(f"{path}: method_state must be an object with method (a name), "
                         f"config (an object) and step (an int); got {state!r}")
    return state
