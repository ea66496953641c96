"""Build a model on the meta device while recording how each tensor was initialised.

A dense build draws its initial weights from the global CPU generator in one fixed order
(construction-time ``reset_parameters``, then transformers' ``post_init``, which for LLaMA
runs once inside ``LlamaModel`` before ``lm_head`` even exists). Reproducing that order
module by module from the outside is model-specific, so instead :func:`record_init` runs the
*same* constructor with every new tensor on the meta device and, for every initialisation
call on a meta tensor (``nn.init.normal_``, ``Tensor.fill_``, ...), stores

* the call (function, arguments),
* if the call draws random numbers: the CPU generator state just before it,

and advances the generator exactly as the dense build would by running the call on a
throw-away CPU tensor of the same shape and dtype (freed at once, so the peak is one tensor).
Replaying a tensor's last full overwrite (and what followed it) from its saved state then
gives bit for bit the value the dense build gave it (:meth:`InitRecord.replay`).

Why not ``with torch.device("meta")``: transformers skips ``initialize_weights`` when it
sees a meta device context, so its ``_init_weights`` calls would never be seen. The mode
here places factory calls on meta without being a device context (``torch.tensor`` is left
alone: it is how transformers asks for the context device, and it only builds small
constants from Python data).

What the record cannot replay (reported by :meth:`InitRecord.replayable` as False, and
left to the model's own init by :func:`~sparse_spectral.models.materialize.materialize`):
a tensor no init call touched (e.g. a buffer computed in ``__init__``), a copy from another
meta tensor (LLaMA's rotary ``inv_freq``: transformers recomputes it in ``_init_weights``),
and in-place ops outside :data:`INIT_OPS`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

__all__ = ["INIT_OPS", "InitCall", "InitRecord", "init_record", "record_init"]

#: In-place operations (``torch.nn.init`` functions and ``Tensor`` methods) that initialise
#: a tensor and can be replayed from their arguments. ``nn.init`` functions that call
#: another of these inside are seen once, at the outer call (the mode is off inside it).
INIT_OPS = frozenset({
    "normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
    "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_", "constant_", "ones_",
    "zeros_", "eye_", "dirac_", "fill_", "zero_", "copy_", "random_", "bernoulli_",
    "exponential_", "log_normal_", "cauchy_", "geometric_",
})
# In-place methods that change no values.
_NO_VALUE_OPS = frozenset({"requires_grad_", "share_memory_", "retain_grad"})
# Factories that draw random numbers: under the mode they still advance the CPU generator
# (so later draws stay in step) but their values are lost (the tensor is meta).
_RANDOM_FACTORIES = frozenset({
    "rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson",
    "rand_like", "randn_like", "randint_like",
})


@dataclass
class InitCall:
    """One recorded initialisation of (a view of) a tensor.

    Attributes:
        func: the function called (``torch.nn.init.normal_``, ``Tensor.fill_``, ...).
        args, kwargs: its arguments, the target tensor replaced by None.
        target_pos: where the target sat: an index into ``args`` or the ``kwargs`` key.
        view: ``(size, stride, storage_offset)`` when the target was a view of the tensor.
        rng_state: CPU generator state before the call if it drew random numbers, else None.
        replayable: False when an argument is a meta tensor (no values to replay).
    """

    func: Callable
    args: tuple
    kwargs: dict[str, Any]
    target_pos: int | str
    view: tuple | None
    rng_state: torch.Tensor | None
    replayable: bool

    def apply(self, tensor: torch.Tensor) -> None:
        """Run the call on ``tensor`` (the whole tensor the call was recorded for)."""
        target = tensor if self.view is None else tensor.as_strided(*self.view)
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.target_pos, int):
            args[self.target_pos] = target
        else:
            kwargs[self.target_pos] = target
        if self.rng_state is not None:
            torch.set_rng_state(self.rng_state)
        with torch.no_grad():
            self.func(*args, **kwargs)


@dataclass
class InitRecord:
    """The initialisation calls of a meta-built model's tensors, by qualified name.

    Attributes:
        seed: the seed of the CPU generator the build started from.
        calls: ``name -> [InitCall, ...]`` in call order, for every parameter and buffer
            name (tied tensors appear under each of their names).
    """

    seed: int | None
    calls: dict[str, list[InitCall]] = field(default_factory=dict)

    def _tail(self, name: str) -> list[InitCall] | None:
        """The calls from the last whole-tensor overwrite on, or None if there is none."""
        calls = self.calls.get(name, [])
        for start in range(len(calls) - 1, -1, -1):
            if calls[start].view is None:
                tail = calls[start:]
                return tail if all(c.replayable for c in tail) else None
        return None

    def replayable(self, name: str) -> bool:
        """Whether :meth:`replay` can give tensor ``name`` the dense build's value."""
        return self._tail(name) is not None

    def draws(self, name: str) -> bool:
        """Whether tensor ``name``'s final value came from random draws."""
        tail = self._tail(name) or self.calls.get(name, [])
        return any(call.rng_state is not None for call in tail)

    def replay(self, name: str, tensor: torch.Tensor) -> None:
        """Write the dense build's value of tensor ``name`` into ``tensor`` (real, on CPU).

        The global CPU generator is left as it was.
        """
        tail = self._tail(name)
        if tail is None:
            raise ValueError(f"tensor {name!r} cannot be replayed from the record")
        with torch.random.fork_rng(devices=[]):
            for call in tail:
                call.apply(tensor)


def _target(func: Callable, args: tuple, kwargs: dict) -> tuple[Any, int | str]:
    if "tensor" in kwargs:
        return kwargs["tensor"], "tensor"
    return (args[0], 0) if args else (None, 0)


def _has_meta_arg(args: tuple, kwargs: dict, pos: int | str) -> bool:
    values = [a for i, a in enumerate(args) if i != pos]
    values += [v for k, v in kwargs.items() if k != pos]
    return any(isinstance(v, torch.Tensor) and v.is_meta for v in values)


class _RecordingMetaMode(TorchFunctionMode):
    """Factories go to meta; init calls on meta tensors are recorded and their draws made."""

    def __init__(self):
        super().__init__()
        self.calls: dict[int, list[InitCall]] = {}
        self.keep: list[torch.Tensor] = []  # recorded tensors stay alive: ids stay unique
        self._factories = _device_constructors() - {torch.tensor}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if func in self._factories and kwargs.get("device") is None:
            if name in _RANDOM_FACTORIES:
                func(*args, **kwargs)  # advance the CPU generator as the dense build does
            kwargs["device"] = "meta"
            return func(*args, **kwargs)
        target, pos = _target(func, args, kwargs)
        if not (isinstance(target, torch.Tensor) and target.is_meta and name.endswith("_")
                and not name.startswith("_") and name not in _NO_VALUE_OPS):
            return func(*args, **kwargs)
        self._record(func, name, args, kwargs, target, pos)
        return target

    def _record(self, func, name, args, kwargs, target, pos) -> None:
        base = target if target._base is None else target._base
        view = None if target is base else (tuple(target.size()), tuple(target.stride()),
                                            target.storage_offset())
        replayable = name in INIT_OPS and not _has_meta_arg(args, kwargs, pos)
        # The same call on a CPU stand-in draws what the dense build draws.
        scratch = torch.empty(base.shape, dtype=base.dtype)
        scratch_target = scratch if view is None else scratch.as_strided(*view)
        call_args, call_kwargs = list(args), dict(kwargs)
        if isinstance(pos, int):
            call_args[pos] = None
        else:
            call_kwargs[pos] = None
        before = torch.get_rng_state()
        stand_in = InitCall(func, tuple(call_args), call_kwargs, pos, view, None, replayable)
        if replayable:
            stand_in.apply(scratch)
        else:
            # Not replayable: still make its draws (with meta arguments swapped for CPU
            # stand-ins) so that every later draw stays in step with the dense build.
            cpu_args = [_cpu_stand_in(a) for a in call_args]
            cpu_kwargs = {k: _cpu_stand_in(v) for k, v in call_kwargs.items()}
            if isinstance(pos, int):
                cpu_args[pos] = scratch_target
            else:
                cpu_kwargs[pos] = scratch_target
            with torch.no_grad():
                func(*cpu_args, **cpu_kwargs)
        if not torch.equal(before, torch.get_rng_state()):
            stand_in.rng_state = before
        del scratch, scratch_target
        self.calls.setdefault(id(base), []).append(stand_in)
        self.keep.append(base)


def _cpu_stand_in(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_meta:
        return torch.zeros(value.shape, dtype=value.dtype)
    return value


_RECORDS: weakref.WeakKeyDictionary[nn.Module, InitRecord] = weakref.WeakKeyDictionary()


@contextmanager
def record_init(seed: int | None = None):
    """Run a model constructor on the meta device, recording its initialisation.

    Use as ``with record_init(seed) as finish: model = finish(Constructor(...))``:
    ``finish`` attaches the record to the built model (see :func:`init_record`) and
    returns it. The global CPU generator is seeded with ``seed`` (when given) inside
    :func:`torch.random.fork_rng`, so the caller's generator is unchanged afterwards.
    """
    mode = _RecordingMetaMode()

    def finish(model: nn.Module) -> nn.Module:
        record = InitRecord(seed)
        for name, tensor in _named_tensors(model):
            record.calls[name] = list(mode.calls.get(id(tensor), []))
        _RECORDS[model] = record
        return model

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        with mode:
            yield finish


def _named_tensors(model: nn.Module):
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def init_record(model: nn.Module) -> InitRecord | None:
    """The record :func:`record_init` attached to ``model``, or None (a copy has none)."""
    return _RECORDS.get(model)
