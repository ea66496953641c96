"""Parameter counts and memory by component, measured from the actual tensors.

SST's honest accounting (SPEC section 4): a converted layer stores ``k (m + n) + k``
weight numbers (more than the dense ``m n`` when square); the saving is in gradients and
optimizer state, which exist only for ``s`` and the ``r`` active pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


def _unique_parameters(model: nn.Module):
    # named_parameters() already drops shared (tied) tensors, as peft counts them.
    return [p for _, p in model.named_parameters()]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; tied tensors count once."""
    params = _unique_parameters(model)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)


def format_trainable_parameters(model: nn.Module) -> str:
    """peft's one-line summary: ``trainable params: X || all params: Y || trainable%: Z``."""
    trainable, total = count_parameters(model)
    share = 100 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}"


def print_trainable_parameters(model: nn.Module) -> None:
    """Print :func:`format_trainable_parameters`."""
    print(format_trainable_parameters(model))


def _nbytes(t: torch.Tensor) -> int:
    """Bytes ``t`` holds on this process: a DTensor (FSDP2) counts its local shard."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


@dataclass
class MemoryReport:
    """Bytes held by each component of the training state.

    Attributes:
        weights: every parameter (trainable or frozen) plus persistent buffers.
        gradients: the ``.grad`` tensors that exist now.
        optimizer_state: every tensor in the optimizer's state (moments, step counters).
    """

    weights: int
    gradients: int
    optimizer_state: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}

    def __str__(self) -> str:
        def mib(b: int) -> str:
            return f"{b / 2**20:.2f} MiB"

        return (f"weights: {mib(self.weights)} || gradients: {mib(self.gradients)} || "
                f"optimizer state: {mib(self.optimizer_state)} || total: {mib(self.total)}")


def memory_report(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
    """Measure weights, gradients and optimizer state of ``model`` in bytes.

    Gradients count only tensors that exist (run a backward pass first to see them);
    optimizer state counts only what the optimizer has allocated (after its first step).
    """
    params = _unique_parameters(model)
    weights = sum(_nbytes(p) for p in params) + sum(_nbytes(b) for b in model.buffers())
    gradients = sum(_nbytes(p.grad) for p in params if p.grad is not None)
    state_bytes = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            state_bytes += sum(_nbytes(v) for v in state.values() if torch.is_tensor(v))
    return MemoryReport(weights, gradients, state_bytes)


def planned_state_bytes(model: nn.Module, moments: int = 2, method=None) -> MemoryReport:
    """Training-state bytes implied by the parameter shapes alone (works on the meta device).

    Weights: every parameter (trainable or frozen) and buffer. Gradients: one tensor per
    trainable parameter. Optimizer state: ``moments`` tensors per trainable parameter
    (AdamW: 2), without Adam's step counters (a few bytes per tensor or slot), except for
    the parameters ``method`` plans itself (``method.planned_state_numel``: GaLore's and
    APOLLO's projected targets keep rank-r moments, in the parameter's dtype).

    Args:
        model: a model, possibly built under ``torch.device("meta")``, already reshaped by
            its training method.
        moments: optimizer tensors per trainable parameter outside the method's plan.
        method: the training method that prepared ``model``, or None (every trainable
            parameter then counts ``moments`` copies of itself).
    """
    params = _unique_parameters(model)
    own = method.planned_state_numel(model) if method is not None else {}
    weights = sum(_nbytes(p) for p in params) + sum(_nbytes(b) for b in model.buffers())
    trainable = [p for p in params if p.requires_grad]
    state = sum(own[id(p)] * p.element_size() if id(p) in own else moments * _nbytes(p)
                for p in trainable)
    return MemoryReport(weights, sum(_nbytes(p) for p in trainable), state)
