"""TinyShakespeare: the 1,115,394-character corpus of char-rnn and nanoGPT.

Where the file comes from, in order:

1. ``<data_dir>/tinyshakespeare/input.txt`` when a data folder is given (``--data-dir`` or
   ``$SST_DATA_DIR``); if that folder lacks the file, that is an error (no silent fallback).
2. ``<cache>/tinyshakespeare/input.txt``, a copy fetched earlier with ``download=True``.
3. Only with ``download=True``: the original char-rnn URL, saved into the cache.

Every copy is checked against the pinned sha256.

Split: nanoGPT's. The first ``int(0.9 * n)`` characters are train, the rest validation.
There is no separate test split: ``test`` is the validation text (the standard
TinyShakespeare protocol reports validation numbers), so report it as validation.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .._util.atomic import atomic_write
from .paths import (
    ChecksumError,
    DataUnavailableError,
    cache_dir,
    check_sha256,
    resolve_data_dir,
)

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
RELATIVE_PATH = Path("tinyshakespeare") / "input.txt"
TRAIN_SHARE = 0.9

_DATA_DIR_HINT = ("pass `--data-dir DIR` (or set SST_DATA_DIR=DIR) where "
                  "DIR/tinyshakespeare/input.txt is the char-rnn file")
_HOW = f"{_DATA_DIR_HINT}, or pass download=True to fetch it from {URL}"


def _fetch(url: str) -> bytes:
    """The bytes at ``url`` (a seam for tests)."""
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def download_tinyshakespeare(cache: Path | None = None) -> Path:
    """Fetch the file into ``<cache>/tinyshakespeare/input.txt`` and check its sha256.

    Raises:
        DataUnavailableError: the download failed (message names ``--data-dir``).
        ChecksumError: the downloaded bytes are not the pinned file (nothing is kept).
    """
    dest = (cache if cache is not None else cache_dir()) / RELATIVE_PATH
    try:
        data = _fetch(URL)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise DataUnavailableError(f"could not download TinyShakespeare from {URL} ({error}); "
                                   f"instead {_DATA_DIR_HINT}") from error
    actual = hashlib.sha256(data).hexdigest()
    if actual != SHA256:
        raise ChecksumError(f"the file downloaded from {URL} has sha256 {actual}, expected "
                            f"{SHA256}; it was not saved. Use `--data-dir DIR` with a good copy.")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(dest, write)
    return dest


def locate(data_dir: str | os.PathLike | None = None, download_missing: bool = False,
           cache: Path | None = None) -> Path:
    """The checksum-verified ``input.txt`` (see the module docstring for the order).

    Args:
        data_dir: data folder; ``None`` means ``$SST_DATA_DIR``, then the cache.
        download_missing: fetch from the original URL when no copy is found.
        cache: cache root; default :func:`~sparse_spectral.data.paths.cache_dir`.

    Raises:
        DataUnavailableError: no copy found (and no download asked for, or it failed).
        ChecksumError: a copy does not match the pinned sha256.
    """
    folder = resolve_data_dir(data_dir)
    if folder is not None:
        path = folder / RELATIVE_PATH
        if not path.is_file():
            raise DataUnavailableError(f"TinyShakespeare not found at {path} (from --data-dir / "
                                       f"SST_DATA_DIR = {str(folder)!r}); {_HOW}")
        check_sha256(path, SHA256)
        return path
    cached = (cache if cache is not None else cache_dir()) / RELATIVE_PATH
    if cached.is_file():
        check_sha256(cached, SHA256, delete_on_mismatch=True)
        return cached
    if download_missing:
        return download_tinyshakespeare(cache)
    raise DataUnavailableError(f"TinyShakespeare needs a data folder: {_HOW}")


def nanogpt_split(text: str) -> tuple[str, str, str]:
    """nanoGPT's split: ``(text[:int(0.9 n)], text[int(0.9 n):], same as validation)``."""
    cut = int(len(text) * TRAIN_SHARE)
    validation = text[cut:]
    return text[:cut], validation, validation


def load_tinyshakespeare(data_dir: str | os.PathLike | None = None, download: bool = False,
                         cache: Path | None = None) -> tuple[str, str, str]:
    """``(train, validation, test)`` with ``test`` equal to ``validation``.

    Args:
        data_dir: data folder; ``None`` means ``$SST_DATA_DIR``, then the cache.
        download: fetch from the original URL into the cache when no copy is found.
        cache: cache root; default :func:`~sparse_spectral.data.paths.cache_dir`.
    """
    path = locate(data_dir, download_missing=download, cache=cache)
    return nanogpt_split(path.read_text(encoding="utf-8"))
