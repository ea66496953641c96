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
