"""Shard-local arithmetic on FSDP2 parameters (DTensors), a no-op on plain tensors.

Under ``torch.distributed.fsdp.fully_shard`` every parameter (and its optimizer state) is a
``DTensor`` holding one shard per rank; DTensor's own operator coverage lacks the index ops
SST needs (``unique``, ``isin``, ``index_copy_`` on some placements). SST therefore works on
the local shards (:func:`local`) with index ops along an unsharded dimension, and calls an
explicit collective only where a reduction spans the sharded one (:func:`sum_over_shards`).
Every helper returns its input's plain-tensor behaviour for a plain tensor, so single-process
code paths are unchanged bit for bit.
"""

from __future__ import annotations

import torch

try:  # torch >= 2.5 ships the public DTensor module
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - a torch build without distributed
    DTensor = None
    Replicate = Shard = None


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 parameter, gradient or optimizer state)."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``t`` (a view: in-place ops on it change ``t``); ``t`` if plain."""
    return t.to_local() if is_sharded(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t`` on every rank (an all-gather for a DTensor); ``t`` if plain."""
    return t.full_tensor() if is_sharded(t) else t


def sharded_dims(t: torch.Tensor) -> set[int]:
    """The tensor dimensions ``t`` is sharded on (empty for a plain tensor)."""
    if not is_sharded(t):
        return set()
    return {p.dim for p in t.placements if isinstance(p, Shard)}


def check_unsharded(t: torch.Tensor, dim: int, what: str) -> None:
    """Raise if ``t`` is sharded along ``dim`` (shard-local index ops need it whole)."""
    if dim % max(t.dim(), 1) in {d % max(t.dim(), 1) for d in sharded_dims(t)}:
        raise ValueError(f"{what}: a tensor sharded on dim {dim} (placements "
                         f"{t.placements}) cannot be indexed along it shard-locally; shard it "
                         "on another dim (sparse_spectral.training.fsdp.shard_model does)")


def local_range(t: torch.Tensor, dim: int) -> tuple[int, int]:
    """``(offset, length)`` of this rank's shard of ``t`` along ``dim`` (global coordinates)."""
    if dim not in sharded_dims(t):
        return 0, t.shape[dim]
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return offset[dim], shape[dim]


def local_positions(t: torch.Tensor, dim: int,
                    indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map global ``indices`` along ``dim`` to positions in this rank's shard.

    Returns:
        ``(positions, which)``: int64 positions in the local shard, and the positions in
        ``indices`` of the entries this rank holds.
    """
    offset, length = local_range(t, dim)
    inside = (indices >= offset) & (indices < offset + length)
    which = torch.nonzero(inside).flatten()
    return indices[which] - offset, which


def local_slice(t: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """The part of ``whole`` (``t``'s global shape) that this rank's shard of ``t`` holds."""
    for dim in sharded_dims(t):
        offset, length = local_range(t, dim)
        whole = whole.narrow(dim, offset, length)
    return whole


def sum_over_shards_(x: torch.Tensor, t: torch.Tensor, dim: int) -> torch.Tensor:
    """All-reduce (sum), in place, a partial sum ``x`` over ``t``'s shards along ``dim``.

    ``x`` was reduced over this rank's shard of ``t`` along ``dim``; when ``t`` is sharded
    there, the other ranks hold the rest of the sum. Nothing happens otherwise.
    """
    if dim in sharded_dims(t):
        import torch.distributed as dist

        mesh_dim = next(i for i, p in enumerate(t.placements)
                        if isinstance(p, Shard) and p.dim == dim)
        dist.all_reduce(x, group=t.device_mesh.get_group(mesh_dim))
    return x


def norms(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t.norm(dim=dim, keepdim=True)`` of the whole ``t``, as this rank's local shape.

    Plain tensors use ``torch.norm`` itself; a tensor sharded along ``dim`` all-reduces the
    local sums of squares (identical on every rank, float rounding apart from one process).
    """
    lt = local(t)
    if dim not in sharded_dims(t):
        return lt.norm(dim=dim, keepdim=True)
    squares = lt.pow(2).sum(dim=dim, keepdim=True)
    return sum_over_shards_(squares, t, dim).sqrt_()


def replicated_like(t: torch.Tensor, local_value: torch.Tensor, keep_dims: set[int]):
    """Wrap ``local_value`` as a DTensor on ``t``'s mesh, sharded like ``t`` only on ``keep_dims``.

    For per-slot state (step counters of shape ``(1, r)``): sharded where the slot dimension
    of ``t`` is sharded, replicated elsewhere. A plain ``t`` returns ``local_value``.
    """
    if not is_sharded(t):
        return local_value
    placements = [p if isinstance(p, Shard) and p.dim in keep_dims else Replicate()
                  for p in t.placements]
    shape = list(local_value.shape)
    for dim in keep_dims & sharded_dims(t):
        shape[dim] = t.shape[dim]
    return DTensor.from_local(local_value, t.device_mesh, placements, run_check=False,
                              shape=torch.Size(shape),
                              stride=torch.empty(shape, device="meta").stride())
