"""Fail loudly when a converted model trains outside its method's life cycle.

A converted model handed to a loop that steps the optimizer but never calls
``method.after_step`` trains on without complaint: SST's selections never change, its
active vectors drift off unit norm and singular values go negative; ReLoRA* never merges.
An optimizer that cannot restart single slots (``torch.optim.AdamW`` on SST's vectors) or
that trains GaLore's or APOLLO's targets without projection is just as silent. The guard
turns these into an exception within a few steps, naming the fix.

Design: one global optimizer step post-hook (``torch.optim.optimizer.
register_optimizer_step_post_hook``), registered on the first :func:`watch`; the method's
``prepare`` (``attach``) watches it. After each step of an optimizer that holds the
method's parameters the hook compares the method's ``step`` (set by ``after_step``) with
what it saw at that optimizer's previous step: once more than :data:`ALLOWED_MISSED_STEPS`
optimizer steps in a row left it unchanged, it raises. Each optimizer is counted on its
own, so a wrapper that steps inner optimizers (``CombinedOptimizer``, accelerate's
``AcceleratedOptimizer``) is not counted twice. Nothing changes for correct users; the cost
is a few dictionary lookups per optimizer step (the membership and optimizer checks run
once per optimizer). Only weak references are kept: a dropped method or optimizer is
forgotten.

Which methods are watched: those whose correctness depends on ``after_step``
(``TrainingMethod.needs_after_step``: SST and ReLoRA*), for the step count; SST also for
its optimizer (per-slot step counters), GaLore and APOLLO for their optimizer (a
projection group).
``full`` and ``lora`` are not watched. :func:`unwatch` silences the guard for one method.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

ALLOWED_MISSED_STEPS = 2
"""Optimizer steps in a row without ``after_step`` that pass; the next one raises."""

_FIX = ("call method.after_step(step, optimizer) after every optimizer.step() (step: the "
        "number of completed optimizer steps, from 1); to train with a transformers.Trainer, "
        "use sparse_spectral.training.hf.SpectralTrainer")
_OPTIMIZER_FIX = ("build the optimizer with method.build_optimizer(model, lr=...) ({}); "
                  "with a transformers.Trainer, use sparse_spectral.training.hf.SpectralTrainer, "
                  "which does that")
_SILENCE = "(sparse_spectral.methods.guard.unwatch(method) silences this check)"
_CONSEQUENCE = {
    "sst": "its selections never change, active vectors drift off unit norm and singular "
           "values can turn negative",
    "relora": "it never merges, re-initialises or resets the optimizer (plain LoRA)",
}


class MethodGuardError(RuntimeError):
    """A converted model is trained in a way its method cannot work with (see the message)."""


class _Seen:
    """What the guard knows of one optimizer, for one method."""

    __slots__ = ("holds", "last_step", "missed", "checked")

    def __init__(self, holds: bool, last_step: int):
        self.holds, self.last_step, self.missed, self.checked = holds, last_step, 0, False


class _Watch:
    """The checks for one method: its parameters, and which of them need what."""

    def __init__(self, method):
        from ..spectral.layer import SpectralLinear

        # The layers, not their parameters: FSDP2's fully_shard replaces parameter objects,
        # and the ids of dropped ones can come back on another model's parameters.
        self.layers = [layer for _, layer in getattr(method, "layers", [])]
        self.name = method.name
        self.needs_after_step = bool(method.needs_after_step)
        self.spectral = any(isinstance(layer, SpectralLinear) for layer in self.layers)
        # GaLore, APOLLO: target weights (ids of live ones) that must sit in the method's
        # projection group, a group carrying the method's marker key ("rank", "scale_type").
        self.projects = hasattr(method, "target_ids")
        self.label = getattr(method, "label", method.name)
        self.marker = getattr(method, "group_marker", "rank")
        self.optimizer_name = getattr(getattr(method, "optimizer_class", None), "__name__", "")
        self.method = weakref.ref(method)
        self.seen: weakref.WeakKeyDictionary[Any, _Seen] = weakref.WeakKeyDictionary()

    @property
    def projected_ids(self) -> set[int]:
        method = self.method()
        return set(method.target_ids) if self.projects and method is not None else set()

    @property
    def active(self) -> bool:
        return self.needs_after_step or self.spectral or bool(self.projected_ids)

    def _param_ids(self) -> set[int]:
        """The ids of the method's trained parameters as they are now."""
        return {id(p) for layer in self.layers for p in layer.parameters()
                if p.requires_grad} | self.projected_ids

    def _slotted(self) -> list[torch.Tensor]:
        """SST: vectors whose slots swap and must restart their own Adam step count."""
        from ..spectral.layer import SpectralLinear

        return [p for layer in self.layers if isinstance(layer, SpectralLinear)
                for p in (layer.U_active, layer.Vh_active)]

    def observe(self, method, optimizer) -> None:
        seen = self.seen.get(optimizer)
        if seen is None:  # once per optimizer
            ids = self._param_ids()
            holds = any(id(p) in ids for group in optimizer.param_groups for p in group["params"])
            seen = self.seen[optimizer] = _Seen(holds, method.step)
        if not seen.holds:
            return
        if not seen.checked:
            seen.checked = True
            self._check_optimizer(optimizer)
        if not self.needs_after_step:
            return
        if method.step != seen.last_step:
            seen.last_step, seen.missed = method.step, 0
        seen.missed += 1
        if seen.missed > ALLOWED_MISSED_STEPS:
            consequence = _CONSEQUENCE.get(self.name, "its schedule never runs")
            raise MethodGuardError(
                f"{seen.missed} optimizer steps of {type(optimizer).__name__} over the "
                f"{self.name!r} method's parameters ran without method.after_step (the "
                f"method is still at step {method.step}), so {consequence}. Fix: {_FIX}. "
                f"{_SILENCE}")

    def _check_optimizer(self, optimizer) -> None:
        kind = type(optimizer).__name__
        projected = self.projected_ids
        if projected:
            for group in optimizer.param_groups:
                if self.marker not in group and any(id(p) in projected
                                                    for p in group["params"]):
                    raise MethodGuardError(
                        f"{kind} trains {self.label}'s target weights in a param group "
                        f"without {self.label}'s projection settings ({self.marker!r}), i.e. "
                        f"at full rank or by another method. Fix: "
                        f"{_OPTIMIZER_FIX.format(self.optimizer_name)}. {_SILENCE}")
        state = optimizer.state
        for p in self._slotted():
            held = state.get(p)
            step = held.get("step") if held else None
            if step is not None and not (torch.is_tensor(step) and step.dim() == p.dim()):
                raise MethodGuardError(
                    f"{kind} keeps one step counter per tensor, so SST cannot restart the "
                    "Adam bias correction of the singular vectors it swaps in (their first "
                    "updates would be several times the learning rate). Fix: "
                    f"{_OPTIMIZER_FIX.format('SlotAdamW, per-slot step counters')}. {_SILENCE}")


_WATCHES: weakref.WeakKeyDictionary[Any, _Watch] = weakref.WeakKeyDictionary()
_HOOK = None


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    if not _WATCHES:
        return
    for method, watch in list(_WATCHES.items()):
        watch.observe(method, optimizer)


def watch(method) -> None:
    """Check every later optimizer step over ``method``'s parameters (see the module doc).

    Called by ``prepare`` (``ReplacingMethod.attach``, ``ProjectedMethod.prepare``);
    calling it again (a re-prepared method) replaces the previous checks. A method with nothing to
    check (``full``, ``lora``) is not watched.
    """
    global _HOOK
    checks = _Watch(method)
    if not checks.active:
        _WATCHES.pop(method, None)
        return
    _WATCHES[method] = checks
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


def unwatch(method) -> None:
    """Stop checking ``method`` (e.g. a deliberate experiment without its schedule)."""
    _WATCHES.pop(method, None)


def is_watched(method) -> bool:
    return method in _WATCHES
