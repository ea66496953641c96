"""Data parallelism under ``torchrun``: the launch, the process group, DDP and row shards.

A run started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
joins one process group (``nccl`` on CUDA, with rank ``r`` on ``cuda:LOCAL_RANK``; ``gloo``
on the CPU) with a timeout on every collective; a run without them is unchanged (no process
group, world size 1). A group the caller initialised already (tests, a notebook) is used as
it is. The loop (:mod:`.loop`) then

* wraps the converted model in ``DistributedDataParallel`` (``find_unused_parameters=False``;
  never ``static_graph``, which crashes with ``no_sync`` on torch 2.13);
* gives rank ``r`` of ``W`` rows ``[r B / W, (r + 1) B / W)`` of every global micro-batch of
  ``B`` rows (:func:`shard_rows`), so the global batch, a pure function of the step, is the
  one a single-process run trains on;
* accumulates under ``no_sync`` on all but the last micro-batch;
* averages the logged loss across ranks; rank 0 alone writes anything.

The methods keep their own between-step changes identical across ranks
(:mod:`sparse_spectral._util.collectives`).

With ``parallel='fsdp2'`` the rows are split the same way, but the model is sharded with
:func:`.fsdp.shard_model` instead of wrapped, accumulation uses FSDP2's
``set_requires_gradient_sync(False)``, and every rank takes part in checkpoints
(:func:`.checkpoint.save_sharded_checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._util.collectives import (
    comm_device,
    replicated_ranks,  # noqa: F401 (public here)
)

#: ``--parallel`` choices. ``auto``: DDP when launched by torchrun, else one process;
#: ``ddp``: DDP, and an error without torchrun; ``fsdp2``: FSDP2 (:mod:`.fsdp`), and an
#: error without torchrun.
PARALLEL_MODES = ("auto", "ddp", "fsdp2")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_JOINED = False  # whether setup() initialised the default group (teardown leaves only that)


@dataclass(frozen=True)
class World:
    """This process's place in the process group."""

    rank: int
    size: int
    local_rank: int = 0
    #: ``ddp`` (replicated model) or ``fsdp2`` (sharded model).
    parallel: str = "ddp"

    @property
    def sharded(self) -> bool:
        return self.parallel == "fsdp2"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` set by torchrun, or None when not launched by it.

    Raises:
        ValueError: the variables are only partly set or not integers in range.
    """
    given = {name: os.environ.get(name) for name in _ENV}
    if given["RANK"] is None and given["WORLD_SIZE"] is None:
        return None
    if given["LOCAL_RANK"] is None:
        given["LOCAL_RANK"] = given["RANK"]
    try:
        rank, size, local = (int(given[name]) for name in _ENV)
    except (TypeError, ValueError):
        raise ValueError(f"torchrun environment {given} must give integer RANK, WORLD_SIZE "
                         "and LOCAL_RANK") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"torchrun environment {given}: need WORLD_SIZE >= 1 and "
                         "0 <= RANK < WORLD_SIZE")
    return rank, size, local


def current() -> World | None:
    """The world of the initialised default process group, or None without one."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    env = launch_env()
    return World(dist.get_rank(), dist.get_world_size(), env[2] if env else 0)


def setup(device: torch.device, parallel: str = "auto",
          timeout_s: float = 1800.0) -> tuple[World | None, torch.device]:
    """Join the torchrun process group (once per process); return the world and the device.

    Args:
        device: the run's device; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``.
        parallel: one of :data:`PARALLEL_MODES`.
        timeout_s: the limit on every collective (a rank that stops answering makes the
            others fail after this long instead of hanging).

    Returns:
        ``(None, device)`` without torchrun or an initialised group; else the world and the
        rank's device.

    Raises:
        ValueError: an unknown ``parallel``, ``ddp`` or ``fsdp2`` without torchrun, or a
            malformed torchrun environment.
    """
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel={parallel!r} is unknown; allowed: {', '.join(PARALLEL_MODES)}")
    if not timeout_s > 0:
        raise ValueError(f"dist_timeout_s={timeout_s!r} must be > 0 (seconds)")
    global _JOINED
    world = current()
    if world is None:
        env = launch_env()
        if env is None:
            if parallel != "auto":
                raise ValueError(f"parallel={parallel!r} needs a torchrun launch (RANK and "
                                 "WORLD_SIZE are not set): torchrun --nproc_per_node N -m "
                                 "sparse_spectral.cli train ...")
            return None, device
        world = World(*env)
        if device.type == "cuda":
            device = _rank_device(world)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
        _JOINED = True
    elif device.type == "cuda":
        device = _rank_device(world)
    return World(world.rank, world.size, world.local_rank,
                 "fsdp2" if parallel == "fsdp2" else "ddp"), device


def _rank_device(world: World) -> torch.device:
    if world.local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={world.local_rank} but only {torch.cuda.device_count()} "
                         "CUDA device(s) are visible: launch at most that many processes per "
                         "node")
    device = torch.device("cuda", world.local_rank)
    torch.cuda.set_device(device)
    return device


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    world = current()
    return world is None or world.is_main


def teardown() -> None:
    """Leave the process group :func:`setup` joined, if any (a caller's group stays)."""
    global _JOINED
    if _JOINED and dist.is_initialized():
        dist.destroy_process_group()
    _JOINED = False


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP: gradients all-reduced, every rank's parameters synced from rank 0.

    ``find_unused_parameters=False`` (every trained tensor gets a gradient every step) and
    ``static_graph=False`` (with ``no_sync`` it crashes in torch 2.13, pytorch#143580).
    """
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=False, static_graph=False)


def check_rows(rows: int | None, world: World, task_name: str,
               min_rows: int | None = None) -> None:
    """Refuse a batch that ``world.size`` ranks cannot split.

    Args:
        rows: the fixed rows of every global micro-batch (split evenly by
            :func:`shard_rows`), or None for a task with its own ``shard``.
        min_rows: with ``rows`` None, the fewest parts (sentences, training nodes) any
            micro-batch splits into; None too: the task cannot be split at all.

    Raises:
        ValueError: ``rows`` is not a multiple of the world size, a micro-batch has fewer
            parts than there are ranks, or the task's batches cannot be split.
    """
    if rows is None and min_rows is None:
        raise ValueError(f"task {task_name!r} cannot run under DDP: its batches cannot be "
                         f"split across ranks (world size {world.size})")
    if rows is not None and rows % world.size:
        raise ValueError(f"world size {world.size} does not divide the global micro-batch of "
                         f"{rows} rows (batch_size): choose a batch_size that is a multiple "
                         f"of {world.size}, or another --nproc_per_node")
    if rows is None and min_rows < world.size:
        raise ValueError(f"task {task_name!r}: the smallest global micro-batch has only "
                         f"{min_rows} rows, fewer than the {world.size} ranks (each needs at "
                         "least one): use larger batches (e.g. --max_tokens) or fewer "
                         "processes")


def shard_rows(batch: Any, world: World) -> Any:
    """Rank ``r``'s contiguous share of every tensor of ``batch`` along dim 0.

    ``batch``: a tensor or nested tuples / lists / dicts of tensors, each with the same
    number of rows ``B`` divisible by the world size; rank ``r`` gets rows
    ``[r B / W, (r + 1) B / W)`` (views, no copy). Other leaves are kept as they are.
    """
    if isinstance(batch, torch.Tensor):
        rows = batch.shape[0]
        if rows % world.size:
            raise ValueError(f"a batch tensor of {rows} rows cannot be split evenly over "
                             f"{world.size} ranks")
        share = rows // world.size
        return batch[world.rank * share:(world.rank + 1) * share]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_rows(item, world) for item in batch)
    if isinstance(batch, dict):
        return {key: shard_rows(value, world) for key, value in batch.items()}
    return batch


def mean_across(value: float) -> float:
    """The mean of ``value`` over the ranks (``value`` itself without a process group)."""
    world = current()
    if world is None or world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    tensor = tensor.to(comm_device(tensor))
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.size


def gradient_sync(engine: nn.Module, world: World | None, last_micro: bool):
    """The context of one micro-batch's forward and backward under gradient accumulation.

    Gradients are reduced across ranks only in the backward of the step's last micro-batch:
    DDP skips its all-reduce under ``no_sync``, FSDP2 its reduce-scatter after
    ``set_requires_gradient_sync(False)``. One process: nothing to do.
    """
    if world is None:
        return contextlib.nullcontext()
    if world.sharded:
        engine.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last_micro else engine.no_sync()
