"""Materialise a meta-device model layer by layer, converting it for a method on the way.

A 1B model built densely needs its fp32 weights (5.4 GB) in host memory before
``method.prepare`` can replace them; SST then adds its factors on top. :func:`materialize`
never holds more than one transformer block densely: it walks the module tree in the
order transformers' ``initialize_weights`` does (children first, each sub-model with its
own ``_init_weights``), gives each module's tensors real storage on the target device,
initialises them, and converts the block's target layers (SVD for SST, base weight + A/B
for LoRA/ReLoRA*) as soon as the block is done, so the block's dense weights are freed
before the next block exists. Tied tensors stay tied (one tensor, materialised once).

Initial values, in order of preference for each tensor:

1. **Replayed** from the record of a ``build_lm(..., device="meta")`` model
   (:mod:`.meta_init`): the dense build's value bit for bit, so with SVD on the CPU the
   result equals ``method.prepare(build_lm(..., seed=seed))`` exactly.
2. **The model's own init** otherwise (a model from ``with torch.device("meta")``, or a
   tensor the record cannot replay, such as LLaMA's rotary ``inv_freq``):
   ``reset_parameters()`` of the module if it has one, then ``_init_weights(module)`` of
   the nearest enclosing transformers ``PreTrainedModel``, with the generators seeded by
   ``seed``. Same distributions as a dense build, different numbers: the dense build's
   draws come in a model-specific order (see :mod:`.meta_init`).

Learned from torchtitan (build on meta, ``to_empty``, then the model's ``init_weights``)
and transformers' ``smart_apply`` over ``_init_weights``; the layer-by-layer conversion and
the replay are this project's.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..methods.base import ReplacingMethod, TrainingMethod
from ..targeting import replace_module
from .meta_init import InitRecord, init_record

__all__ = ["materialize"]


def _is_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _init_owner(module: nn.Module, owner):
    """The module whose ``_init_weights`` initialises ``module`` (transformers' dispatch)."""
    return module if hasattr(module, "_init_weights") and hasattr(module, "config") else owner


def _fork_rng(device: torch.device):
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else 0
    return torch.random.fork_rng(devices=[index], device_type=device.type)


class _Materializer:
    """One walk over a meta model: allocate, initialise, convert, block by block."""

    def __init__(self, model: nn.Module, method: TrainingMethod | None, device: torch.device,
                 record: InitRecord | None):
        self.model, self.method, self.device, self.record = model, method, device, record
        # meta tensor id -> its real tensor, for ties. Weak: a converted block's dense
        # weights must be freed when its modules are replaced, not kept alive here.
        self.done: dict[int, weakref.ref] = {}
        self.targets: dict[str, int] = {}
        self.pending: list[str] = []
        if isinstance(method, ReplacingMethod):
            self.targets = {name: index for index, (name, _) in enumerate(method.targets(model))}

    def run(self) -> None:
        self._walk(self.model, "", _init_owner(self.model, None), block=True)

    def _walk(self, module: nn.Module, prefix: str, owner, block: bool) -> None:
        # Children first, as transformers' smart_apply: a parent's _init_weights may
        # rescale its children (GPT-2's c_proj), so a block converts after its own visit.
        is_list = isinstance(module, nn.ModuleList)
        for name, child in list(module.named_children()):
            self._walk(child, f"{prefix}{name}.", _init_owner(child, owner), block=is_list)
        self._visit(module, prefix, owner)
        if prefix[:-1] in self.targets:
            self.pending.append(prefix[:-1])
        if block:
            self._convert_pending()

    @torch.no_grad()
    def _visit(self, module: nn.Module, prefix: str, owner) -> None:
        """Give ``module``'s own tensors storage on the device and their initial values."""
        fresh: list[tuple[str, torch.Tensor]] = []
        for kind in ("_parameters", "_buffers"):
            slots = getattr(module, kind)
            for name, tensor in list(slots.items()):
                if tensor is None or not tensor.is_meta:
                    continue
                ref = self.done.get(id(tensor))
                real = None if ref is None else ref()
                if real is None:
                    real = torch.empty_like(tensor, device=self.device)
                    if isinstance(tensor, nn.Parameter):
                        real = nn.Parameter(real, requires_grad=tensor.requires_grad)
                    self.done[id(tensor)] = weakref.ref(real)
                    fresh.append((prefix + name, real))
                slots[name] = real
        replayed = [(n, t) for n, t in fresh if self.record and self.record.replayable(n)]
        if self.record is None or len(replayed) < len(fresh):
            self._own_init(module, owner)
        for name, tensor in replayed:
            if tensor.device.type == "cpu":
                self.record.replay(name, tensor)
            else:  # the dense build drew on the CPU: draw there, then move
                value = torch.empty_like(tensor, device="cpu")
                self.record.replay(name, value)
                tensor.copy_(value)

    @staticmethod
    def _own_init(module: nn.Module, owner) -> None:
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        if owner is not None:
            owner._init_weights(module)

    def _convert_pending(self) -> None:
        """Replace the finished block's targets; their dense weights go with the old modules."""
        for name in self.pending:
            dense = self.model.get_submodule(name)
            replace_module(self.model, name, self.method.convert_layer(self.targets[name], dense))
        self.pending.clear()


def _unconvert(model: nn.Module, method: ReplacingMethod) -> None:
    """Turn a model ``method`` prepared on meta back into meta dense layers (no memory)."""
    with torch.random.fork_rng(devices=[]):  # GPT-2's Conv1D draws a CPU init when built
        for name, layer in method.converted_layers(model):
            replace_module(model, name, layer.to_linear())


def materialize(model: nn.Module, method: TrainingMethod | None = None,
                device: str | torch.device = "cpu", seed: int | None = None) -> nn.Module:
    """Allocate a meta-device model on ``device`` block by block, converted for ``method``.

    Example (a LLaMA-1B for SST without a dense host copy)::

        model = build_lm("llama_1b", vocab_size=32000, block_size=1024, seed=0,
                         device="meta")
        method = make_method("sst", rank=128)
        model = materialize(model, method, device="cuda")
        optimizer = method.build_optimizer(model, lr=1e-3)

    Args:
        model: a model whose tensors are on the meta device: from
            ``build_lm(..., device="meta")`` (replayed exactly) or built under
            ``with torch.device("meta")`` (the model's own init, seeded by ``seed``).
            It may already have been ``method.prepare``-d on meta (e.g. to size it with
            ``planned_state_bytes``); its converted layers are then rebuilt from scratch.
        method: the training method to convert for (None: leave every layer dense). After
            the call it is bound to the model as ``method.prepare`` would leave it.
        device: where the tensors are allocated and the conversion (SST's SVD) runs.
        seed: seed of the model's own init for tensors without a record (default 0).
            A recorded model replays its build's seed; a different ``seed`` is an error.

    Returns:
        ``model``, modified in place: no meta tensor left.

    Raises:
        ValueError: ``model`` has no meta tensor, ``seed`` contradicts the record, or a
            target does not fit the method's rank (checked before anything is allocated).
    """
    if not _is_meta(model):
        raise ValueError("model has no tensor on the meta device; a model that already "
                         "exists needs method.prepare(model), not materialize")
    device = torch.device(device)
    if device.type == "meta":
        raise ValueError("device='meta' is where the model is already; pick a real device")
    record = init_record(model)
    if record is not None and seed is not None and seed != record.seed:
        raise ValueError(f"seed={seed} contradicts the model's record (built with seed="
                         f"{record.seed}); pass seed=None or rebuild with that seed")
    if isinstance(method, ReplacingMethod) and method.converted_layers(model):
        _unconvert(model, method)
    walk = _Materializer(model, method, device, record)
    with _fork_rng(device):
        torch.manual_seed(0 if seed is None else seed)
        walk.run()
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on meta after materialize: {left[:5]}")
    if isinstance(method, ReplacingMethod):
        method.attach(model)
        method.start_layers()
    elif method is not None:
        method.prepare(model)
    return model
