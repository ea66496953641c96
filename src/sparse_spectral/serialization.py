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
from safetensors.torch import load_model, save_model
from torch import nn

from ._util.atomic import atomic_write, atomic_write_json
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
    """
    directory = Path(directory)
    meta_path = directory / METHOD_FILE
    if not meta_path.is_file() or not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a sparse-spectral save: it needs "
                                f"{METHOD_FILE} and {MODEL_FILE}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {meta.get('format_version')!r} is not "
                         f"supported (expected {FORMAT_VERSION})")
    state = meta["method_state"]
    method = method_from_state(state)
    model = method.prepare(model)
    load_model(model, directory / MODEL_FILE, strict=True)
    method.load_state_dict(state)
    return model, method
