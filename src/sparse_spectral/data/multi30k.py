"""Multi30k task 1 (Elliott et al. 2016): German-English image-caption translation.

The raw files of ``multi30k/dataset`` (``data/task1/raw/``) are read from
``<data_dir>/multi30k/<split>.<lang>.gz`` with ``data_dir`` given explicitly (``--data-dir``)
or by ``$SST_DATA_DIR``; the package never downloads or writes them. One sentence per line,
UTF-8, gzip:

=============  ====================  =========
split          file stem             pairs
=============  ====================  =========
train          ``train``             29,000
validation     ``val``               1,014
test           ``test_2016_flickr``  1,000
=============  ====================  =========

Every file must hold exactly the pair count above (both sides of a split line up by line
number), so a truncated or different copy fails loudly instead of training on the wrong data.
Sentences are kept as they are (cased, untokenised): BLEU is computed on this raw text.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from .paths import DataUnavailableError, resolve_data_dir

LANGUAGES = ("de", "en")
# split name -> (file stem, pair count)
SPLIT_FILES = {"train": ("train", 29000), "validation": ("val", 1014),
               "test": ("test_2016_flickr", 1000)}
FOLDER = "multi30k"

_HINT = ("pass `--data-dir DIR` (or set SST_DATA_DIR=DIR) where DIR/multi30k/ holds the raw "
         "Multi30k task-1 files {train,val,test_2016_flickr}.{de,en}.gz "
         "(github.com/multi30k/dataset, data/task1/raw)")


@dataclass(frozen=True)
class ParallelText:
    """Aligned sentence pairs of one split.

    Attributes:
        source: source sentences, one per pair.
        target: target sentences, ``target[i]`` translates ``source[i]``.
    """

    source: tuple[str, ...]
    target: tuple[str, ...]

    def __post_init__(self):
        if len(self.source) != len(self.target):
            raise ValueError(f"{len(self.source)} source sentences but {len(self.target)} "
                             f"target sentences; the sides of a split must line up")

    def __len__(self) -> int:
        return len(self.source)

    def head(self, count: int | None) -> ParallelText:
        """The first ``count`` pairs (all of them for ``None``)."""
        if count is None:
            return self
        if count < 1:
            raise ValueError(f"pair count {count} must be >= 1 (or None for all)")
        return ParallelText(self.source[:count], self.target[:count])


def read_lines(path: Path) -> tuple[str, ...]:
    """The lines of a gzip text file, without line ends (a final newline adds no line)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    if text.endswith("\n"):
        text = text[:-1]
    return tuple(line.rstrip("\r") for line in text.split("\n")) if text else ()


def multi30k_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/multi30k`` (``data_dir`` or ``$SST_DATA_DIR``).

    Raises:
        DataUnavailableError: no data folder was given, or it has no ``multi30k`` folder.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataUnavailableError(f"Multi30k needs a data folder: {_HINT}")
    folder = root / FOLDER
    if not folder.is_dir():
        raise DataUnavailableError(f"Multi30k folder {folder} does not exist: {_HINT}")
    return folder


def load_multi30k(data_dir: str | os.PathLike | None = None, source: str = "de",
                  target: str = "en") -> dict[str, ParallelText]:
    """The three Multi30k splits as ``{"train", "validation", "test"} -> ParallelText``.

    Args:
        data_dir: folder holding ``multi30k/`` (default ``$SST_DATA_DIR``).
        source: source language, ``"de"`` or ``"en"``.
        target: target language, the other one.

    Raises:
        ValueError: a bad language pair, or a file whose line count is not the split's.
        DataUnavailableError: the folder or one of the six files is missing; the message
            names the path, ``--data-dir`` and ``SST_DATA_DIR``.
    """
    if source not in LANGUAGES or target not in LANGUAGES or source == target:
        raise ValueError(f"language pair {source!r} -> {target!r} is not available; Multi30k "
                         f"task 1 here has {list(LANGUAGES)}: use de -> en or en -> de")
    folder = multi30k_dir(data_dir)
    splits = {}
    for split, (stem, count) in SPLIT_FILES.items():
        sides = []
        for lang in (source, target):
            path = folder / f"{stem}.{lang}.gz"
            if not path.is_file():
                raise DataUnavailableError(f"Multi30k file {path} is missing: {_HINT}")
            lines = read_lines(path)
            if len(lines) != count:
                raise ValueError(f"Multi30k file {path} has {len(lines):,d} lines, expected "
                                 f"{count:,d} ({split} split); the copy is truncated or not "
                                 f"the task-1 raw release")
            sides.append(lines)
        splits[split] = ParallelText(*sides)
    return splits
