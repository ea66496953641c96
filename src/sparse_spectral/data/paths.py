"""Where data lives: the download cache, the user's data folder, checksums, atomic writes.

* ``cache_dir()``: ``$SST_CACHE_DIR`` or ``~/.cache/sparse-spectral``, created on demand.
  Everything this package downloads or derives (wheels, tokenizers, encoded splits) goes
  there, so deleting the folder is always safe.
* ``resolve_data_dir(data_dir)``: the explicit argument, else ``$SST_DATA_DIR``, else
  ``None``. A data folder holds data sets the user obtained (e.g.
  ``<data_dir>/tinyshakespeare/input.txt``); the package never writes into it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "SST_CACHE_DIR"
DATA_ENV = "SST_DATA_DIR"


class DataUnavailableError(RuntimeError):
    """A data set could not be found or fetched; the message says what to do instead."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the pinned value."""


def cache_dir() -> Path:
    """The cache folder (``$SST_CACHE_DIR`` or ``~/.cache/sparse-spectral``), created."""
    root = os.environ.get(CACHE_ENV) or "~/.cache/sparse-spectral"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The user's data folder: ``data_dir`` if given, else ``$SST_DATA_DIR``, else ``None``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, *, delete_on_mismatch: bool = False) -> None:
    """Raise :class:`ChecksumError` naming ``path`` when its sha256 is not ``expected``.

    Args:
        path: file to check.
        expected: pinned hex digest.
        delete_on_mismatch: remove the file first (for files this package downloaded, so
            that the next attempt fetches a fresh copy).
    """
    actual = sha256_file(path)
    if actual == expected:
        return
    note = ""
    if delete_on_mismatch:
        path.unlink(missing_ok=True)
        note = " The file was deleted; the next run fetches it again."
    raise ChecksumError(f"checksum mismatch for {path}: sha256 {actual}, expected {expected}. "
                        f"The file is corrupt or a different version.{note}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then move the temp file onto ``path`` with ``os.replace``.

    Readers never see a half-written file, and concurrent writers of the same content
    (e.g. two runs filling one cache) cannot corrupt it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)
