"""The few collectives the methods need to keep DDP replicas identical; no-ops otherwise.

The methods change state between ``optimizer.step()`` and the next forward (SST's
selections and re-SVDs, GaLore's projections). DDP keeps only gradients in sync, so these
changes must come out bitwise identical on every rank by themselves; the helpers here make
that true by construction (one rank computes, every rank receives), independent of
LAPACK's thread-count-dependent bits. Every rank must call them in the same order. They run
only inside :func:`replicated_ranks` (the training loop enters it for a DDP run).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

# Whether the model being trained is replicated on every rank (DDP). Only then do the
# methods' collectives run: a process group alone does not say so (a reference model
# trained on one rank of a group, or FSDP2 shards, whose own collectives keep them equal).
_REPLICATED = False


@contextlib.contextmanager
def replicated_ranks(enabled: bool = True) -> Iterator[None]:
    """Within: the methods treat the model as replicated across the default process group.

    The training loop enters it around a DDP run; outside it :func:`world` is ``(0, 1)``
    and every helper here is a no-op, whatever process group exists.
    """
    global _REPLICATED
    previous, _REPLICATED = _REPLICATED, enabled
    try:
        yield
    finally:
        _REPLICATED = previous


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group while training a replicated
    model (:func:`replicated_ranks`), else ``(0, 1)``."""
    if _REPLICATED and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device(tensor: torch.Tensor) -> torch.device:
    """Where ``tensor`` must sit to be sent: NCCL sends CUDA tensors only."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


@torch.no_grad()
def broadcast_(tensors: Sequence[torch.Tensor], src: int) -> None:
    """Overwrite every tensor of ``tensors`` with rank ``src``'s values, in place.

    Parameters keep their objects (DDP and the optimizer hold them); a tensor that cannot be
    sent as it is (non-contiguous, or on the CPU under NCCL) goes through a copy. A no-op
    without a process group of more than one rank.
    """
    if world()[1] == 1:
        return
    pending = []
    for tensor in tensors:
        target = tensor.detach()
        buffer = target
        if not target.is_contiguous() or comm_device(target) != target.device:
            buffer = target.contiguous().to(comm_device(target))
        pending.append((dist.broadcast(buffer, src, async_op=True), target, buffer))
    for work, target, buffer in pending:
        work.wait()
        if buffer is not target:
            target.copy_(buffer)


def broadcast_indices(indices: Sequence[torch.Tensor], src: int = 0) -> list[torch.Tensor]:
    """Rank ``src``'s version of each int64 tensor of ``indices``, sent as one message.

    Returns new tensors of the same shapes on the inputs' devices; the inputs themselves
    unchanged. Without a group of more than one rank: the inputs.
    """
    if world()[1] == 1 or not indices:
        return list(indices)
    flat = torch.cat([i.detach().reshape(-1).to("cpu", torch.int64) for i in indices])
    broadcast_([flat], src)
    out, offset = [], 0
    for i in indices:
        out.append(flat[offset:offset + i.numel()].view(i.shape).to(i.device))
        offset += i.numel()
    return out
