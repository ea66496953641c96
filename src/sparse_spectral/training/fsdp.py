"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for converted models, and DCP checkpoints.

:func:`shard_model` shards a prepared model (each block, then the root) with the placements
SST's shard-local state changes need; :func:`save_checkpoint` / :func:`load_checkpoint`
write and resume the model, the optimizer and the method's JSON state through
``torch.distributed.checkpoint`` (every rank writes its own shards). Call all three on every
rank of an initialised process group. Build the optimizer *after* :func:`shard_model`:
``fully_shard`` replaces the parameter objects.

What each method needs (all verified on CPU/gloo against one process):
- ``full``, ``lora``: nothing beyond FSDP2 itself.
- ``relora``: the merge gathers ``A`` and ``B`` (``r (m + n)`` numbers per layer) and adds
  each rank's shard of ``B A`` to its shard of ``W``; the new ``A`` is drawn whole on every
  rank from the same counter-seeded generator and sliced.
- ``sst``: ``U_*`` (m, .) are sharded by rows (dim 0, the default), ``Vh_*`` (., n) by
  *columns* (dim 1), so the slot dimension of both stays whole: swaps and per-slot moment
  resets are shard-local, renormalisation all-reduces r sums of squares, and the re-SVD needs
  no gather (:meth:`SpectralLinear._resvd_sharded`). FSDP2 requires even sharding on a
  nonzero dim, so every SST layer's ``in_features`` must divide by the world size.
- ``galore``: refused. Its projector is the SVD of the *whole* gradient of each target
  matrix, which FSDP2 reduce-scatters into row shards: it would need an all-gather of every
  target's ``m x n`` gradient at each projector update plus an all-reduce of the projected
  ``rank x n`` gradient every step, outside FSDP2's own communication.
- ``apollo``, ``apollo_mini``: refused. The projection of a wide target (m < n: ``P^T G``,
  (r, n)) sums over the m rows that FSDP2 shards across ranks, and the norm-growth limiter
  and APOLLO-Mini's tensor-wise factor need the norm of the whole gradient: an all-reduce of
  ``r x n`` numbers per target and of two norms per step, outside FSDP2's own communication
  (apollo-torch does not support FSDP either).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .._util.atomic import atomic_write_json
from ..methods.base import TrainingMethod
from ..spectral.layer import SpectralLinear

FORMAT = "sparse-spectral-fsdp2"
METHOD_FILE = "method.json"
UNSUPPORTED = {
    "galore": "GaLore's projector is the SVD of each target's whole gradient, which FSDP2 "
              "shards by rows; it would need an all-gather of every m x n gradient at each "
              "projector update. Use --parallel ddp for galore",
    **dict.fromkeys(("apollo", "apollo_mini"),
                    "APOLLO projects each wide target's gradient over its rows, which FSDP2 "
                    "shards across ranks, and its limiter (and APOLLO-Mini's scale) needs the "
                    "whole gradient's norm; it would need an all-reduce of r x n numbers per "
                    "target every step. Use --parallel ddp for apollo and apollo_mini"),
}


def _require_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("FSDP2 needs an initialised process group: launch with torchrun "
                           "and call torch.distributed.init_process_group first")


def _blocks(model: nn.Module, method: TrainingMethod | None) -> list[nn.Module]:
    """Units to shard one by one: a transformers model's ``_no_split_modules`` (its decoder
    blocks), else the method's converted layers, else none (the root alone)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    layers = getattr(method, "layers", None) or []
    return [layer for _, layer in layers]


def shard_model(model: nn.Module, method: TrainingMethod | None = None, mesh=None,
                reshard_after_forward: bool = True) -> nn.Module:
    """``fully_shard`` each block of a prepared ``model``, then the root; return ``model``.

    Args:
        model: the model after ``method.prepare`` (on its training device).
        method: the training method (decides the units and SST's placements), or None.
        mesh: a 1-D ``DeviceMesh``; default: all ranks on the model's device type (passed
            explicitly so a CPU/gloo run on a machine with GPUs stays on the CPU).
        reshard_after_forward: FSDP2's option (free the gathered block after forward).

    Raises:
        ValueError: a method FSDP2 cannot run (GaLore, APOLLO), or an SST layer whose
            ``in_features`` does not divide by the world size.
        RuntimeError: no process group.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import Shard

    _require_group()
    name = getattr(method, "name", None)
    if name in UNSUPPORTED:
        raise ValueError(f"method {name!r} is not supported under FSDP2: {UNSUPPORTED[name]}")
    world = dist.get_world_size()
    if mesh is None:
        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (world,))
    columns = set()
    for layer_name, layer in ((n, m) for n, m in model.named_modules()
                              if isinstance(m, SpectralLinear)):
        if layer.in_features % world:
            raise ValueError(f"SST layer {layer_name!r} has in_features={layer.in_features}, "
                             f"not divisible by the world size {world}: FSDP2 shards its Vh "
                             "by columns, which must split evenly")
        columns |= {id(layer.Vh_active), id(layer.Vh_frozen)}
        # FSDP2 re-gathers the factors before each forward into buffers it may reuse: keep
        # no composed W across calls (SpectralLinear.reuse_composed_weight).
        layer.reuse_composed_weight = False

    def placement(param: nn.Parameter):
        return Shard(1) if id(param) in columns else None  # None: FSDP2's Shard(0)

    options = dict(mesh=mesh, reshard_after_forward=reshard_after_forward,
                   shard_placement_fn=placement)
    for block in _blocks(model, method):
        fully_shard(block, **options)
    fully_shard(model, **options)
    for name in getattr(model, "forward_methods", ()):  # e.g. a translation model's decoding
        register_fsdp_forward_method(model, name)
    return model


def save_checkpoint(directory: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer,
                    method: TrainingMethod | None = None, extra: dict | None = None) -> Path:
    """Save a sharded model, its optimizer and the method state into a new ``directory``.

    Every rank writes its shards (``__<rank>_0.distcp``) and DCP writes ``.metadata`` last;
    rank 0 then writes ``method.json`` (method state, world size, ``extra``). Frozen
    parameters are always saved (SST's frozen factors change at every swap and re-SVD).
    Collective: call on every rank.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    _require_group()
    directory = Path(directory)
    if (directory / ".metadata").exists():
        raise ValueError(f"checkpoint directory {str(directory)!r} already holds a checkpoint; "
                         "save each one into a new directory (an overwrite can leave old "
                         "metadata pointing at half-written shards)")
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory))
    if dist.get_rank() == 0:
        atomic_write_json(directory / METHOD_FILE, {
            "format": FORMAT, "world_size": dist.get_world_size(),
            "method": None if method is None else method.state_dict(),
            "extra": extra or {}})
    dist.barrier()
    return directory


def load_checkpoint(directory: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer,
                    method: TrainingMethod | None = None) -> dict:
    """Resume from :func:`save_checkpoint`: load model and optimizer in place, then the method.

    ``model`` must be prepared and sharded as at save time and ``optimizer`` built over it
    (DCP loads into allocated tensors; a different world size is resharded by DCP).
    Collective: call on every rank.

    Returns:
        The ``extra`` dict given at save time.

    Raises:
        ValueError: ``directory`` is not a finished checkpoint of this format.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    _require_group()
    directory = Path(directory)
    meta_path = directory / METHOD_FILE
    if not (directory / ".metadata").exists() or not meta_path.exists():
        raise ValueError(f"{str(directory)!r} is not a finished FSDP2 checkpoint (needs "
                         f".metadata and {METHOD_FILE}; was the save interrupted?)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{str(meta_path)!r} has format {meta.get('format')!r}, not {FORMAT!r}")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    if method is not None:
        if meta["method"] is None:
            raise ValueError(f"{str(directory)!r} was saved without a method state")
        method.load_state_dict(meta["method"])
    return meta["extra"]
