"""Where and in which precision a run trains: ``--device`` and ``--precision``.

Devices: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.
Precisions (Lightning's names):

* ``fp32``: float32 parameters and arithmetic (the default; bit-exact resume on CPU).
* ``bf16-mixed``: float32 parameters and optimizer state, the forward pass and loss under
  ``torch.autocast(dtype=torch.bfloat16)`` on the run's device; gradients are float32.
* ``bf16``: parameters (and so gradients and optimizer state) in bfloat16; SST's re-SVD runs
  in its ``svd_dtype`` (float32) and is cast back.
* ``fp16-mixed``: as ``bf16-mixed`` with ``torch.autocast(dtype=torch.float16)`` and a
  gradient scaler (:func:`grad_scaler`, ``torch.amp.GradScaler``; CPU autocast runs float16
  too): the loss is scaled before backward, gradients are unscaled before clipping, and a
  step whose gradients hold an inf or NaN is skipped (the optimizer does not step) while the
  scale halves. The loop treats a skipped step as a step with a zero update: the LR
  schedule and the method's clock (``after_step``) advance as in an fp32 run (see
  :mod:`.loop`).

Both are checked before a run writes anything, with one error naming the value and what is
allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16-mixed", "bf16", "fp16-mixed")
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` of ``--device spec``.

    Raises:
        ValueError: an unknown spelling, CUDA requested where none exists, or a CUDA index
            beyond the visible devices.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"device={spec!r} is unknown; allowed: auto, cpu, cuda, cuda:N")
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r}: CUDA is not available on this machine; "
                             "allowed here: auto, cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device={spec!r}: only {torch.cuda.device_count()} CUDA "
                             f"device(s) are visible (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
        return torch.device(text)
    raise ValueError(f"device={spec!r} is unknown; allowed: auto, cpu, cuda, cuda:N")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision that is unknown or that ``device`` cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision.startswith("bf16") and device.type == "cuda" \
            and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision={precision!r}: {torch.cuda.get_device_name(device)} has no "
                         "bfloat16 support; allowed here: fp32, fp16-mixed")


def autocast(precision: str, device: torch.device):
    """The context the forward pass and loss run in (a no-op unless a ``-mixed`` precision)."""
    if precision in _AUTOCAST_DTYPES:
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device,
                sharded: bool = False) -> torch.amp.GradScaler | None:
    """The loss scaler of ``fp16-mixed`` (torch's defaults: scale 2^16, halved on a skipped
    step, doubled after 2000 clean ones); None for every other precision (bf16 has fp32's
    exponent range and needs none).

    ``sharded`` (FSDP2): torch's ``ShardedGradScaler``, which all-reduces the inf/NaN flag,
    since each rank sees only its shards of the gradients (with the plain scaler one rank
    could skip a step the others take).
    """
    if precision != "fp16-mixed":
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def parameter_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def move_to(value: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``value`` with every tensor in it on ``device`` (tuples, lists, dicts, dataclasses).

    ``dtype``: also cast floating tensors to it (pure ``bf16`` runs feed bf16 inputs).
    Objects that are neither are returned as they are (numpy arrays, tokenizers), and so is
    every container whose tensors need no change: on the CPU in fp32 this copies nothing.
    """
    if isinstance(value, torch.Tensor):
        cast = dtype if dtype is not None and value.is_floating_point() else None
        return value.to(device=device, dtype=cast)
    if isinstance(value, dict):
        moved = {k: move_to(v, device, dtype) for k, v in value.items()}
        return value if all(moved[k] is v for k, v in value.items()) else type(value)(moved)
    if isinstance(value, (list, tuple)):
        parts = [move_to(v, device, dtype) for v in value]
        if all(new is old for new, old in zip(parts, value)):
            return value
        return type(value)(*parts) if hasattr(value, "_fields") else type(value)(parts)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: move_to(getattr(value, f.name), device, dtype)
                   for f in dataclasses.fields(value) if f.init}
        if all(changes[k] is getattr(value, k) for k in changes):
            return value
        return dataclasses.replace(value, **changes)
    return value


def input_dtype(precision: str) -> torch.dtype | None:
    """The dtype floating inputs are cast to: bf16 for pure ``bf16`` runs, else unchanged."""
    return torch.bfloat16 if precision == "bf16" else None


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA H200, bf16)`` for ``sst info`` and summaries."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
    return f"cuda:{index} ({torch.cuda.get_device_name(index)}, {bf16})"
