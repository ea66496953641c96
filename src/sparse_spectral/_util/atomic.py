"""Atomic, durable file writes: write to a temporary name in the same folder, fsync it,
``os.replace`` it onto the final name, then fsync the folder.

Readers never see a half-written file, and an interrupted write leaves the previous version
(or nothing) under the final name, plus at most a ``.<name>.*.tmp`` file that
:func:`stale_temporaries` finds. The folder's fsync makes the rename itself survive a power
loss (without it a crash can bring back the old name or an empty file on ext4/xfs).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (renames, new files) to the disk (a no-op where folders
    cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)``, fsync it, move it onto ``path``, fsync the folder.

    The file gets the usual permissions (``0o666`` less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically (Python's JSON: a float NaN
    is written as a bare ``NaN``; :func:`json_safe` first where strict readers matter)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float, however deeply nested, as the text ``"nan"``,
    ``"inf"`` or ``"-inf"`` (the metrics log's convention; ``float()`` reads them back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """The ``.<name>.*.tmp`` files :func:`atomic_write` leaves in ``folder`` when killed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file())
