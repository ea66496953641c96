"""IDX files (the MNIST / Fashion-MNIST format) and the Fashion-MNIST loader.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the values row-major. MNIST-style data uses two kinds:

* images: magic ``0x00000803`` (unsigned bytes, 3 dimensions ``(N, rows, cols)``);
* labels: magic ``0x00000801`` (unsigned bytes, 1 dimension ``(N,)``).

Files may be gzip-compressed (``*.gz``, detected by content) or raw. The reader checks the
magic number, the sizes and the byte count and names the file in every error, so a truncated
download never turns into a silently shorter data set.

Fashion-MNIST is looked up, in order, under ``<data_dir>/fashion-mnist/`` (this project's
data-folder layout) and ``<data_dir>/FashionMNIST/raw/`` (torchvision's layout), with
``data_dir`` from the argument (CLI ``--data-dir``) or ``$SST_DATA_DIR``.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from .paths import DATA_ENV, DataUnavailableError, resolve_data_dir

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "IDXFormatError", "fashion_mnist_files",
           "load_fashion_mnist", "read_idx"]

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"

# File stems (without ``.gz``) of the four Fashion-MNIST files, as distributed.
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


class IDXFormatError(ValueError):
    """An IDX file is malformed or truncated; the message names the file."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, gzip.BadGzipFile) as err:
        raise IDXFormatError(f"{path}: the gzip stream is corrupt or truncated ({err}); "
                             "download the file again") from err


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one unsigned-byte IDX file.

    Args:
        path: the file, raw or gzip-compressed.
        expected_magic: ``IDX_IMAGES_MAGIC`` or ``IDX_LABELS_MAGIC`` to insist on one kind;
            None accepts any unsigned-byte IDX file.

    Returns:
        ``uint8`` array of the stored shape, e.g. ``(N, 28, 28)`` or ``(N,)``.

    Raises:
        IDXFormatError: wrong magic number, unsupported value type, or fewer/more bytes
            than the header's sizes call for (naming expected and found byte counts).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: {len(data)} bytes, too short for the 4-byte IDX magic "
                             "number (truncated file?)")
    magic = struct.unpack(">I", data[:4])[0]
    zero, dtype, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        raise IDXFormatError(f"{path}: magic number 0x{magic:08x}, expected "
                             f"0x{expected_magic:08x}")
    if zero != 0 or dtype != _UBYTE or ndim < 1:
        raise IDXFormatError(f"{path}: magic number 0x{magic:08x} is not an unsigned-byte IDX "
                             "header (expected 0x000008NN with NN the number of dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: header needs {header} bytes for {ndim} dimensions, "
                             f"found {len(data)} (truncated file)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated file" if len(data) < expected else "trailing bytes"
        raise IDXFormatError(f"{path}: sizes {tuple(shape)} need {expected} bytes, found "
                             f"{len(data)} ({kind})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def fashion_mnist_files(data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Paths of the four Fashion-MNIST files (``.gz`` or raw) under the data folder.

    Raises:
        DataUnavailableError: no data folder given, or no candidate folder holds all four
            files; the message lists the folders searched and how to point at the data.
    """
    root = resolve_data_dir(data_dir)
    hint = (f"pass --data-dir DIR (or set {DATA_ENV}) to a folder holding fashion-mnist/ or "
            "torchvision's FashionMNIST/raw/ with the four IDX files "
            f"({', '.join(s + '.gz' for s in FASHION_FILES.values())})")
    if root is None:
        raise DataUnavailableError(f"Fashion-MNIST: no data folder given; {hint}")
    searched = [root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    for folder in searched:
        found = {}
        for key, stem in FASHION_FILES.items():
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(FASHION_FILES):
            return found
    raise DataUnavailableError(f"Fashion-MNIST: the four IDX files are not in "
                               f"{' or '.join(map(str, searched))}; {hint}")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None):
    """Fashion-MNIST as uint8 arrays.

    Returns:
        ``((train_images (60000, 28, 28), train_labels (60000,)),
        (test_images (10000, 28, 28), test_labels (10000,)))``.

    Raises:
        DataUnavailableError: files not found (see :func:`fashion_mnist_files`).
        IDXFormatError: a file is malformed, truncated, or images and labels disagree in
            count, or a label is outside 0-9.
    """
    files = fashion_mnist_files(data_dir)
    arrays = {key: read_idx(path, IDX_IMAGES_MAGIC if key.endswith("images")
                            else IDX_LABELS_MAGIC) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise IDXFormatError(f"{files[split + '_images']} holds {len(images)} images but "
                                 f"{files[split + '_labels']} holds {len(labels)} labels")
        if len(labels) and labels.max() >= len(FASHION_CLASSES):
            raise IDXFormatError(f"{files[split + '_labels']}: label {labels.max()} outside "
                                 f"0-{len(FASHION_CLASSES) - 1}")
    return ((arrays["train_images"], arrays["train_labels"]),
            (arrays["test_images"], arrays["test_labels"]))
