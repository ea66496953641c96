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

What makes a checkpoint trustworthy (docs/reliability.md): every file is fsynced and listed
with its sha256 in ``manifest.json`` (:mod:`.manifest`) before the directory is renamed into
place; the loop publishes only finite weights and optimizer state
(:func:`.divergence.check_finite_state`); ``latest`` holds a bare ``step_NNNNNN`` name, and a
pointer leading anywhere else is ignored; :func:`resumable_checkpoint` verifies the latest
checkpoint against its manifest and falls back, with a warning naming the damaged one, to
the newest intact older one; a file that still does not fit the model (a changed shape, a
missing tensor) is a :class:`CheckpointError` naming it, not a traceback from a reader.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .._util.atomic import atomic_write, fsync_dir
from .manifest import CheckpointDamaged, verify_manifest, write_manifest

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST = "latest"
#: What ``latest`` may hold and what a checkpoint directory is called.
STEP_NAME = re.compile(r"step_\d{6,}")
#: Prefix of the directories a save writes before renaming them into place.
PARTIAL_PREFIX = ".step_"


class CheckpointError(ValueError):
    """A checkpoint cannot be written (disk full, no permission) or resumed from (damaged,
    unreadable, not this run's model). A ``ValueError``: ``sst`` prints it as one line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """Checksum and fsync the finished ``tmp``, rename it into ``final`` (replacing a
    re-saved step whole), then point ``latest`` at it (each rename fsynced)."""
    write_manifest(tmp)
    if final.is_symlink():  # not ours to follow (a resume never used it)
        final.unlink()
    elif final.exists():  # re-saving a step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
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
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the checkpoint private
    try:
        save_model(model, str(tmp / MODEL_FILE))
        torch.save(_state_record(step, optimizer.state_dict(), method.state_dict(), scheduler,
                                 settings, extra, world_size, parallel), tmp / STATE_FILE)
        _publish(root, tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _write_error(run_dir, final, err) from None
        raise
    return final


def _write_error(run_dir, final: Path, err: OSError) -> CheckpointError:
    """The one-line error of a failed save (what failed, why, what is still there)."""
    try:
        kept = latest_checkpoint(run_dir)
    except CheckpointError:
        kept = None
    return CheckpointError(f"could not write checkpoint {final} ({err.strerror or err}); "
                           f"the latest checkpoint is still {kept.name if kept else 'none'}")


def _step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The directory named by ``<run>/checkpoints/latest``, or None if the run has none.

    The pointer is not verified here (:func:`resumable_checkpoint` does that); it must
    name a directory beside it.

    Raises:
        CheckpointError: the pointer holds anything but a ``step_NNNNNN`` name (e.g. a path
            into another run), or names a directory that is missing.
    """
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = _read_pointer(pointer)
    path = root / name
    if path.is_symlink() or not path.is_dir():
        raise CheckpointError(f"{pointer} names {name}, which is missing (or a link)")
    return path


def _read_pointer(pointer: Path) -> str:
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer} is unreadable: {err}") from None
    if not STEP_NAME.fullmatch(name):
        raise CheckpointError(f"{pointer} holds {name[:80]!r}, not a checkpoint name of this run "
                              "(step_NNNNNN): a pointer may not lead out of its run folder")
    return name


def checkpoint_steps(run_dir: str | os.PathLike) -> list[Path]:
    """Every published ``step_*`` directory of a run, newest first (none verified)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir()
             and not p.is_symlink()]
    return sorted(found, key=_step_of, reverse=True)


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check a checkpoint directory against its manifest, read its ``state.pt``; return it.

    Raises:
        CheckpointError: the manifest is missing or a file differs from it, or
            ``state.pt`` is unreadable or of another step.
    """
    path = Path(path)
    try:
        verify_manifest(path)
    except CheckpointDamaged as err:
        raise CheckpointError(str(err)) from None
    state = read_checkpoint_state(path)
    if int(state.get("step", -1)) != _step_of(path):
        raise CheckpointError(f"{path / STATE_FILE} holds step {state.get('step')!r}, not "
                              f"{_step_of(path)}")
    if state.get("optimizer") is not None:  # (FSDP2 keeps it in the shards)
        _check_optimizer_state(path, state)
    return state


def check_model_file(path: str | os.PathLike, model: nn.Module) -> None:
    """Refuse a checkpoint whose ``model.safetensors`` does not fit ``model`` (read from its
    header only: tensor names and shapes), before anything is written.

    A tensor tied to another (sharing its storage) may be absent: safetensors saves one name.

    Raises:
        CheckpointError: naming the missing and unexpected tensors and changed shapes.
    """
    from safetensors import safe_open

    file = Path(path) / MODEL_FILE
    with _loading(file, "model"):
        with safe_open(str(file), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    groups: dict[int, list[str]] = {}
    expected = model.state_dict()
    for name, tensor in expected.items():
        groups.setdefault(tensor.untyped_storage().data_ptr() if tensor.numel() else id(tensor),
                          []).append(name)
    missing = [names[0] for names in groups.values() if not any(n in shapes for n in names)]
    unexpected = sorted(set(shapes) - set(expected))
    changed = [f"{k} {list(shapes[k])} in the checkpoint, {list(expected[k].shape)} here"
               for k in expected if k in shapes and shapes[k] != tuple(expected[k].shape)]
    problems = ([f"missing tensor(s) {', '.join(missing[:4])}"] if missing else []) \
        + ([f"unexpected tensor(s) {', '.join(unexpected[:4])}"] if unexpected else []) \
        + ([f"shape of {'; '.join(changed[:3])}"] if changed else [])
    if problems:
        raise CheckpointError(f"{file} does not fit this run's model: " + "; ".join(problems))


def resumable_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint a resume should start from, or None if there is none.

    The one ``latest`` names comes first, then the older ones, newest first (without a
    usable pointer, every published one). Each is verified (:func:`verify_checkpoint`);
    passing over a damaged one warns, naming it and what is wrong. Newer directories than
    the pointer's are never used: the run had moved back past them.

    Raises:
        CheckpointError: checkpoints exist but none is intact (each named with its damage).
    """
    root = checkpoint_root(run_dir)
    steps = checkpoint_steps(run_dir)
    problems: list[str] = []
    try:
        pointed = latest_checkpoint(run_dir)
    except CheckpointError as err:
        problems.append(str(err))
        pointed = None
    if pointed is not None:
        steps = [pointed] + [p for p in steps if _step_of(p) < _step_of(pointed)]
    elif (root / LATEST).is_file() and not problems:
        problems.append(f"{root / LATEST} names nothing")
    for path in steps:
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"resuming from {path}, the newest intact checkpoint; passed over: "
                          + "; ".join(problems), stacklevel=2)
        return path
    if problems:
        raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from: "
                              + "; ".join(problems))
    return None


def stale_partials(run_dir: str | os.PathLike) -> list[Path]:
    """What interrupted saves left in ``<run>/checkpoints``: ``.step_*`` directories and
    ``.latest.*.tmp`` files."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.name.startswith(PARTIAL_PREFIX)
                  or (p.name.startswith(f".{LATEST}.") and p.name.endswith(".tmp")))


def read_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """The ``state.pt`` of a checkpoint directory, loaded with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing or unreadable (truncated, not a torch file).
    """
    file = Path(path) / STATE_FILE
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{file} is unreadable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{file} is not a checkpoint state (no step)")
    return state


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
    with _loading(path / MODEL_FILE, "the model"):
        load_model(model, str(path / MODEL_FILE), strict=True)
    with _loading(path / STATE_FILE, "the method"):
        method.load_state_dict(state["method"])
    _check_optimizer_state(path, state)
    with _loading(path / STATE_FILE, "the optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    _restore_rest(path, state, scheduler, stateful)
    return int(state["step"])


class _loading:
    """Turn a reader's or ``load_state_dict``'s error into a :class:`CheckpointError`
    naming the file and what was being restored."""

    def __init__(self, file: Path, what: str):
        self.file, self.what = file, what

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is None or not isinstance(err, Exception) or isinstance(err, CheckpointError):
            return False
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[:4]) + (" ..." if len(lines) > 4 else "")
        raise CheckpointError(f"{self.file} does not fit this run's {self.what} "
                              f"({type(err).__name__}: {detail})") from None


def _check_optimizer_state(path: Path, state: dict[str, Any]) -> None:
    """Refuse an optimizer state without moments after real updates (an emptied state would
    resume with fresh moments: a different run). A run whose every step so far the fp16
    scaler skipped has none, legitimately. A combined optimizer's state
    (``{"optimizers": [...]}``, the hyperbolic tasks') counts if any part has moments."""
    optim = state.get("optimizer")
    parts = optim.get("optimizers") if isinstance(optim, dict) and "optimizers" in optim \
        else [optim]
    if not isinstance(parts, list) or not all(
            isinstance(p, dict) and "state" in p and "param_groups" in p for p in parts):
        raise CheckpointError(f"{path / STATE_FILE} has no optimizer state")
    history = state.get("extra", {}).get("history", {})
    updated = history.get("updates", int(state["step"]))
    if updated > 0 and not any(p["state"] for p in parts):
        raise CheckpointError(f"{path / STATE_FILE}: the optimizer state is empty after "
                              f"{updated} update(s); resuming would restart its moments")


#: ``stateful`` entries a checkpoint may lack (it predates them): they keep a fresh state.
OPTIONAL_STATE = ("guard", "history")


def _restore_rest(path: Path, state: dict[str, Any], scheduler, stateful) -> None:
    """The scheduler, the RNG and ``stateful`` from a checkpoint's ``state.pt``."""
    with _loading(path / STATE_FILE, "scheduler"):
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    saved_extra = state.get("extra", {})
    for name, obj in (stateful or {}).items():
        if name not in saved_extra:
            if name in OPTIONAL_STATE:
                continue
            raise ValueError(f"checkpoint {path} has no {name!r} state to resume from "
                             f"(it has: {sorted(saved_extra) or 'none'})")
        with _loading(path / STATE_FILE, f"{name} state"):
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
    with _loading(path, "sharded model and optimizer"):
        fsdp.load_checkpoint(path, model, optimizer, method)
    _restore_rest(path, state, scheduler, stateful)
    return int(state["step"])
