"""Run folders that protect their contents: one writer, no silent overwrite, no litter.

:func:`claim` is what a run does to its ``output_dir`` before it writes anything there:

* **one writer**: it takes ``<run>/.lock`` (an ``flock``, which the kernel drops when the
  process dies, even by ``kill -9``). A second run into the same folder is refused, naming
  the holder (pid, host, start time). A lock file still naming a process (the previous
  holder was killed) is taken over with a warning naming it.
* **no silent overwrite**: a new run (no ``--resume``) into a folder that holds a run's
  files is refused unless ``--overwrite`` is given, which first removes exactly those files
  (:data:`RUN_FILES`, :data:`RUN_DIRS`, report plots; nothing else of the folder). With
  ``--resume`` the files are kept (the resume trims the log to its checkpoint only once the
  checkpoint and the settings have been checked).
* **no litter**: temporary files of writes that a kill interrupted (``.step_*`` checkpoint
  directories, ``.<name>.*.tmp`` files) are removed, under the lock, so never a live
  writer's.
* **clear errors**: an ``output_dir`` that is a file, lies under a file, or cannot be written
  is a :class:`RunFolderError` naming it (a ``ValueError``: ``sst`` prints one line).

Under DDP or FSDP2 only rank 0 claims the folder (it alone writes there); the other ranks
learn through one all-reduce whether it could (:func:`claim` with ``world``), so a refused
claim fails every rank alike.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .._util.atomic import stale_temporaries
from .checkpoint import checkpoint_root, stale_partials

try:
    import fcntl
except ImportError:  # Windows: no flock; the folder checks still apply
    fcntl = None

LOCK_FILE = ".lock"
#: Files and folders a run writes at the top of its folder (``--overwrite`` removes these).
RUN_FILES = ("metrics.jsonl", "summary.json", "report.md")
RUN_DIRS = ("checkpoints", "tensorboard")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (held by another run, holds an old run, is
    not a writable folder, or could not be written)."""


def run_contents(run_dir: str | os.PathLike) -> list[Path]:
    """What of a previous run ``run_dir`` holds (its files, checkpoints, report plots)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    found = [folder / name for name in (*RUN_FILES, *RUN_DIRS) if (folder / name).exists()]
    if found:  # a run report's plots go with the run
        found += sorted(folder.glob("*.png"))
    return found


def check_output_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` if it is, or can become, a folder (read-only check, every rank).

    Raises:
        RunFolderError: it, or a folder above it, is a file.
    """
    folder = Path(run_dir)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            what = "is a file" if path == folder else f"lies under {path}, which is a file"
            raise RunFolderError(f"--output_dir {folder} {what}, not a folder; choose "
                                 "another --output_dir")
    return folder


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn an ``OSError`` (disk full, permission denied, ...) while writing ``path`` into a
    :class:`RunFolderError` saying what could not be written and why."""
    try:
        yield
    except OSError as err:
        raise RunFolderError(f"could not write {what} {path}: "
                             f"{err.strerror or err}") from None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that is just starting"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started "
            f"{holder.get('started')}")


class RunLock:
    """``<run>/.lock``, held with ``flock`` while a run writes its folder.

    The file holds the holder's pid, host, start time and command (JSON) while held, and is
    emptied on release; content found when the lock is free is a killed holder's.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def _read(self, fd: int) -> dict | None:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
        if not text:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {"pid": "?", "host": "?", "started": f"? ({text[:60]!r})"}
        return holder if isinstance(holder, dict) else None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RunFolderError: another live process holds it (named), or the folder cannot be
                written.
        """
        with writing(self.path, "the run folder's lock"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunFolderError(
                        f"{self.path.parent} is being written by another run "
                        f"({_describe(self._read(fd))}); wait for it to end, or choose another "
                        "--output_dir") from None
            previous = self._read(fd)
            if previous:
                warnings.warn(f"{self.path}: taking over the lock of {_describe(previous)}, "
                              "which is no longer running (it was killed or crashed)",
                              stacklevel=3)
            with writing(self.path, "the run folder's lock"):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, (json.dumps(_holder()) + "\n").encode())
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Empty the lock file and drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:  # e.g. a full disk: the next run then takes over with a warning
            pass
        finally:
            os.close(fd)  # closing drops the flock


def _clear(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _sweep(run_dir: Path) -> list[Path]:
    """Remove what interrupted writes left (run folder and checkpoints); return it."""
    stale = stale_temporaries(run_dir) + stale_partials(run_dir) \
        + stale_temporaries(checkpoint_root(run_dir))
    stale = sorted(set(stale))
    _clear(stale)
    return stale


def prepare(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """The fresh/overwrite/resume rule and the sweep, for a folder whose lock is held."""
    folder = Path(run_dir)
    old = run_contents(folder)
    if old and not resume:
        if not overwrite:
            raise _refuse_old_run(folder, old)
        with writing(folder, "(clearing) the run folder"):
            _clear(old)
    with writing(folder, "(sweeping) the run folder"):
        stale = _sweep(folder)
    if stale:
        warnings.warn(f"{folder}: removed {len(stale)} temporary file(s) that an interrupted "
                      f"write left: {', '.join(p.name for p in stale[:5])}", stacklevel=3)


def _agree(failure: BaseException | None, world,
           message: str = "rank 0 could not claim the run folder (its error says why)") -> None:
    """Fail every rank when any failed (one all-reduce; a no-op for one process)."""
    if world is None or world.size == 1:
        if failure is not None:
            raise failure
        return
    from .distributed import mean_across

    failed = mean_across(0.0 if failure is None else 1.0) > 0
    if failure is not None:
        raise failure
    if failed:
        raise RunFolderError(message)


def lock_holder(run_dir: str | os.PathLike) -> dict | None:
    """The holder of ``run_dir``'s lock if a live process holds it now, else None (a
    read-only probe: the lock file is neither created nor changed)."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return RunLock(run_dir)._read(fd) or {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _check_conflicts(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ValueError("--resume continues the run in --output_dir and --overwrite replaces "
                         "it: give one of them")


def _refuse_old_run(folder: Path, old: list[Path]) -> RunFolderError:
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in old[:6])
    return RunFolderError(f"--output_dir {folder} already holds a run ({names}); pass "
                          "--resume to continue it, --overwrite to replace it, or choose "
                          "another --output_dir")


def check_request(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                  world=None) -> None:
    """What :func:`claim` will refuse, checked early and read-only (before the data are
    prepared): a bad path, a live writer, an old run without ``--overwrite``, a resume of
    nothing.

    Under a ``world`` every rank checks the folder, rank 0 alone probes the lock (another
    rank could see rank 0's own lock of this run), and one all-reduce makes a refusal fail
    every rank.

    Raises:
        RunFolderError, ValueError, FileNotFoundError: as :func:`claim`.
    """
    failure = None
    try:
        _check_request(Path(run_dir), resume, overwrite,
                       probe_lock=world is None or world.is_main)
    except (ValueError, FileNotFoundError) as err:  # RunFolderError is a ValueError
        failure = err
    _agree(failure, world, "rank 0 refused the run folder (its error says why)")


def _check_request(run_dir: Path, resume: bool, overwrite: bool, probe_lock: bool) -> None:
    folder = check_output_dir(run_dir)
    _check_conflicts(resume, overwrite)
    if resume and not folder.is_dir():
        raise FileNotFoundError(f"--resume: {folder} does not exist: no checkpoint to resume from")
    holder = lock_holder(folder) if probe_lock else None
    if holder is not None:
        raise RunFolderError(f"{folder} is being written by another run "
                             f"({_describe(holder)}); wait for it to end, or choose another "
                             "--output_dir")
    old = run_contents(folder)
    if old and not resume and not overwrite:
        raise _refuse_old_run(folder, old)


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
          world=None) -> Iterator[Path]:
    """Hold ``run_dir`` for one run (module docstring); yield it.

    Args:
        resume: the run continues the folder's checkpoint (its files are kept).
        overwrite: a new run may replace the folder's old run (its files are removed).
        world: the DDP/FSDP2 world, or None; only rank 0 takes the lock.

    Raises:
        RunFolderError: see the module docstring; ``ValueError`` for ``resume`` with
            ``overwrite``, or ``resume`` of a folder that does not exist.
    """
    folder = check_output_dir(run_dir)
    _check_conflicts(resume, overwrite)
    if resume and not folder.is_dir():
        raise FileNotFoundError(f"--resume: {folder} does not exist: no checkpoint to resume from")
    main = world is None or world.is_main
    lock = RunLock(folder)
    failure = None
    if main:
        try:
            with writing(folder, "the run folder"):
                folder.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            prepare(folder, resume=resume, overwrite=overwrite)
        except BaseException as err:
            lock.release()
            failure = err
    _agree(failure, world)
    try:
        yield folder
    finally:
        lock.release()


def check_fresh(folders: list[Path], files: list[Path], overwrite: bool, command: str) -> None:
    """Refuse ``sst compare``/``ablate`` into an output folder that holds an earlier one's
    runs, before the first run trains (each run folder claims itself as it starts); with
    ``overwrite``, remove the earlier results ``files`` (each run clears its own folder).

    Raises:
        RunFolderError: naming what is there and the ways out.
    """
    old = [f for f in files if f.exists()] + [f for f in folders if run_contents(f)]
    if not old:
        return
    if not overwrite:
        names = ", ".join(str(p) for p in old[:4]) + (" ..." if len(old) > 4 else "")
        raise RunFolderError(f"{command}: the output folder already holds results ({names}); "
                             "pass --overwrite to replace them, or choose another --output_dir")
    with writing(files[0].parent if files else folders[0], "(clearing) the output folder"):
        _clear([f for f in files if f.exists()])
