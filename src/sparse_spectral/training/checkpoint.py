"""Training checkpoints: one directory per step, published atomically.

``<run>/checkpoints/step_000600/`` holds ``model.safetensors`` (every tensor of the converted
model) and ``state.pt`` (optimizer, LR scheduler, method state, torch RNG, step, settings and
an environment fingerprint; plain tensors and Python scalars only, so
``torch.load(weights_only=True)`` reads it). The directory is written under a temporary name
and renamed into place, then ``<run>/checkpoints/latest`` is replaced atomically: a crash
mid-save leaves the previous checkpoint as the latest one.

An FSDP2 run (``--parallel fsdp2``) writes the same directory layout through
:func:`save_sharded_checkpoint`, with every rank taking part: the model and optimizer as
``torch.distributed.checkpoint`` shards (``.metadata``, ``__<rank>_0.distcp``) plus the
method's ``method.json`` (:mod:`.fsdp`); ``state.pt`` holds the rest (scheduler, RNG,
settings, batch and evaluation state) and ``model.safetensors`` the gathered full model
(for export and evaluation; a resume reads the shards). Every ``state.pt`` records the
parallel mode and world size, and a resume must match both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .._util.atomic import atomic_write

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST = "latest"


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _state_record(step: int, optimizer_state, method_state, scheduler,
                  settings: dict[str, Any], extra: dict[str, Any] | None, world_size: int,
                  parallel: str) -> dict[str, Any]:
    """The ``state.pt`` dict of a checkpoint (optimizer and method state None for FSDP2,
    whose shards and ``method.json`` hold them)."""
    return {
        "step": step,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "method": method_state,
        "rng": torch.get_rng_state(),
        "settings": settings,
        "extra": extra or {},
        "environment": {"torch": str(torch.__version__), "threads": torch.get_num_threads(),
                        "world_size": int(world_size), "parallel": parallel},
    }


def _publish(root: Path, tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` into ``final`` (replacing a re-saved step whole), then
    point ``latest`` at it."""
    if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write(root / LATEST, lambda path: Path(path).write_text(final.name + "\n"))


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module, optimizer,
                    scheduler, method, settings: dict[str, Any],
                    extra: dict[str, Any] | None = None, world_size: int = 1,
                    parallel: str = "ddp") -> Path:
    """Write checkpoint ``step`` of a run and make it the latest; return its directory.

    ``extra``: the state dicts of what else the run depends on (batch streams, evaluation
    hooks), by name; restored by :func:`restore_checkpoint`'s ``stateful``.
    ``world_size``: the number of DDP ranks that trained, ``parallel``: ``ddp`` (also one
    process) (both recorded; a resume must match). Under DDP only rank 0 calls this (every
    rank holds the same state).
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        save_model(model, str(tmp / MODEL_FILE))
        torch.save(_state_record(step, optimizer.state_dict(), method.state_dict(), scheduler,
                                 settings, extra, world_size, parallel), tmp / STATE_FILE)
        _publish(root, tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The directory named by ``<run>/checkpoints/latest``, or None if the run has none."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete or missing")
    return path


def read_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint directory, loaded with ``weights_only=True``."""
    return torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")


def check_world_size(state: dict[str, Any], world_size: int, path: str | os.PathLike,
                     parallel: str = "ddp") -> None:
    """Refuse to resume a checkpoint (its ``state.pt`` dict) written by another world size
    or parallel mode (``ddp``, which one process counts as, or ``fsdp2``).

    A checkpoint from before the fields existed counts as one DDP process.

    Raises:
        ValueError: naming both world sizes, or both modes.
    """
    environment = state.get("environment", {})
    saved_mode = environment.get("parallel", "ddp")
    if saved_mode != parallel:
        raise ValueError(f"checkpoint {path} was written with --parallel {saved_mode}, this run "
                         f"uses {parallel}: resume with --parallel {saved_mode} (the two store "
                         "the model and optimizer differently)")
    saved = int(environment.get("world_size", 1))
    if saved != world_size:
        raise ValueError(f"checkpoint {path} was written by a run of {saved} process(es), this "
                         f"one has {world_size}: resume with --nproc_per_node {saved} (the "
                         "global batch would be the same, but the all-reduce order and so "
                         "the bits would not)")


def restore_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer, scheduler,
                       method, stateful: dict[str, Any] | None = None,
                       world_size: int = 1) -> int:
    """Load a checkpoint into already-built objects; return its step.

    ``model`` must already be prepared by ``method`` (same settings). Order matters: model
    tensors first, then the method (which checks its selections against them), then the
    optimizer and scheduler, then the RNG. ``stateful``: objects with ``load_state_dict``
    saved as ``extra`` by :func:`save_checkpoint`, by name.

    Raises:
        ValueError: the checkpoint lacks the state of one of ``stateful``, or was written
            with another ``world_size`` (:func:`check_world_size`).
    """
    path = Path(path)
    state = read_checkpoint_state(path)
    check_world_size(state, world_size, path)
    load_model(model, str(path / MODEL_FILE), strict=True)
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    _restore_rest(path, state, scheduler, stateful)
    return int(state["step"])


def _restore_rest(path: Path, state: dict[str, Any], scheduler, stateful) -> None:
    """The scheduler, the RNG and ``stateful`` from a checkpoint's ``state.pt``."""
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    saved_extra = state.get("extra", {})
    for name, obj in (stateful or {}).items():
        if name not in saved_extra:
            raise ValueError(f"checkpoint {path} has no {name!r} state to resume from "
                             f"(it has: {sorted(saved_extra) or 'none'})")
        obj.load_state_dict(saved_extra[name])
    saved_threads = state["environment"]["threads"]
    if saved_threads != torch.get_num_threads():
        warnings.warn(f"checkpoint was written with {saved_threads} threads, resuming with "
                      f"{torch.get_num_threads()}: LAPACK's SVD differs in its last bits across "
                      "thread counts, so the resumed run will not be bit-exact", stacklevel=3)


def save_sharded_checkpoint(run_dir: str | os.PathLike, step: int, model: nn.Module,
                            optimizer, scheduler, method, settings: dict[str, Any],
                            extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` of an FSDP2 run and make it the latest; return its directory.

    Collective: every rank calls it. The shards go through :func:`.fsdp.save_checkpoint`
    into ``.step_XXXXXX.partial``; rank 0 then writes ``state.pt`` and the gathered
    ``model.safetensors`` and renames the directory into place (so, as for DDP, a crash
    mid-save leaves the previous checkpoint the latest).
    """
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from . import fsdp

    main = dist.get_rank() == 0
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f".{final.name}.partial"
    if main:  # a partial directory of a crashed save is stale
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    fsdp.save_checkpoint(tmp, model, optimizer, method, extra={"step": step})
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if main:
        save_file(_unshared(full), str(tmp / MODEL_FILE))
        torch.save(_state_record(step, None, None, scheduler, settings, extra,
                                 dist.get_world_size(), "fsdp2"), tmp / STATE_FILE)
        _publish(root, tmp, final)
    dist.barrier()
    return final


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every tensor owning its storage (tied weights copied): safetensors
    refuses shared storage."""
    seen, out = set(), {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone() if ptr in seen else value.contiguous()
        seen.add(ptr)
    return out


def restore_sharded_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer,
                               scheduler, method, stateful: dict[str, Any] | None = None,
                               world_size: int = 1) -> int:
    """Resume an FSDP2 run from :func:`save_sharded_checkpoint`; return its step.

    Collective: every rank calls it with ``model`` prepared and sharded as at save time and
    ``optimizer`` built over the shards.

    Raises:
        ValueError: the checkpoint was written with another parallel mode or world size, or
            lacks the state of one of ``stateful``.
    """
    from . import fsdp

    path = Path(path)
    state = read_checkpoint_state(path)
    check_world_size(state, world_size, path, "fsdp2")
    fsdp.load_checkpoint(path, model, optimizer, method)
    _restore_rest(path, state, scheduler, stateful)
    return int(state["step"])
