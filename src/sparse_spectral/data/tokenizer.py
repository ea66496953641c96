"""Character and byte-level BPE tokenizers behind one small interface, with a disk cache.

Both tokenizers provide ``kind``, ``vocab_size``, ``encode(text) -> list[int]``,
``encode_array(text) -> np.ndarray`` (int64, the fast path), ``decode(ids) -> str``,
``save(path)`` and ``fingerprint`` (sha256 of the saved form); :func:`load_tokenizer_file`
reads either file back.

* ``char``: the sorted set of characters of the TRAIN split, ids ``0 .. n-1`` in code-point
  order, plus ``<unk>`` (id ``n``, the last) for characters not seen in training. ``<unk>``
  decodes to U+FFFD, so one id is always one character.
* ``bpe``: byte-level BPE trained with the ``tokenizers`` library (GPT-2 pre-tokenizer
  regex, the 256 byte symbols as the base alphabet, merges of pairs seen at least twice,
  no special tokens). Any text encodes without unknowns and decodes back exactly.
  ``vocab_size`` counts the 256 bytes plus the merges, so it must be at least
  :data:`MIN_BPE_VOCAB` (257: one merge); a small corpus may run out of pairs, so the
  trained vocabulary can be smaller than asked (read ``tokenizer.vocab_size``). Training is
  deterministic (same text and size, same merges; ties break by token id).

:func:`get_tokenizer` trains on ``corpus.train`` or loads the cached result from
``<cache>/tokenizers/<key>.json`` with ``key = <corpus>-<kind>[<vocab>]-v<format>-<digest16>``
(see :func:`tokenizer_key`); files are written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .._util.atomic import atomic_write_text
from .corpus import Corpus
from .paths import cache_dir

TOKENIZER_KINDS = ("char", "bpe")
FORMAT_VERSION = 1
CHAR_FORMAT = "sparse_spectral.char_tokenizer"
UNK = "<unk>"
UNK_TEXT = "\ufffd"
MIN_BPE_VOCAB = 257
DEFAULT_BPE_VOCAB = 2048

# Chunk boundaries for encoding long texts: right after a "\n" that follows a non-space
# character and precedes one. The GPT-2 pre-tokenizer always splits there and nothing it
# does looks across such a point, so encoding chunk by chunk equals encoding the whole text.
_SAFE_BOUNDARY = re.compile(r"(?<=\S\n)(?=\S)")
_CHUNK_CHARS = 1 << 16


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...

    def save(self, path: str | os.PathLike) -> None: ...


def _as_id_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors and numpy arrays, any device
        ids = ids.tolist()
    return [int(i) for i in ids]


def _check_ids(ids: list[int], vocab_size: int) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]}{'...' if len(bad) > 5 else ''} are out of range "
                         f"[0, {vocab_size})")


class _SavedAsJson:
    """Fingerprint and atomic save for tokenizers whose saved form is ``to_json()``."""

    def to_json(self) -> str:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """sha256 hex of :meth:`to_json` (identifies the vocabulary, and merges for BPE)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to ``path`` (its JSON, atomically)."""
        atomic_write_text(path, self.to_json())


class CharTokenizer(_SavedAsJson):
    """One id per character of the training text, plus ``<unk>`` (the last id).

    Args:
        chars: the distinct characters, in code-point order.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = tuple(chars)
        if not chars:
            raise ValueError("a char tokenizer needs at least one character")
        if any(len(c) != 1 for c in chars) or list(chars) != sorted(set(chars)):
            raise ValueError("chars must be distinct single characters in sorted order")
        self.chars = chars
        self.unk_id = len(chars)
        self._table = chars + (UNK_TEXT,)
        # Sorted code points: encoding is one vectorised binary search.
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.int64)

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The tokenizer of ``text``'s characters (pass the TRAIN split)."""
        if not text:
            raise ValueError("cannot train a char tokenizer on empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Characters plus ``<unk>``."""
        return len(self.chars) + 1

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array of shape ``(len(text),)``."""
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        points = points.astype(np.int64)
        pos = np.searchsorted(self._codepoints, points)
        known = self._codepoints[np.minimum(pos, len(self.chars) - 1)] == points
        return np.where(known, pos, self.unk_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (unseen characters -> ``unk_id``)."""
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        """Text of ``ids`` (a sequence, array or 1-D tensor); ``<unk>`` -> U+FFFD."""
        ids = _as_id_list(ids)
        _check_ids(ids, self.vocab_size)
        return "".join(self._table[i] for i in ids)

    def to_json(self) -> str:
        """The saved form (JSON)."""
        return json.dumps({"format": CHAR_FORMAT, "version": FORMAT_VERSION, "kind": self.kind,
                           "unk": UNK, "chars": "".join(self.chars)}, ensure_ascii=True)

    @classmethod
    def from_json(cls, data: dict) -> CharTokenizer:
        if data.get("format") != CHAR_FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a version-{FORMAT_VERSION} {CHAR_FORMAT} file: format="
                             f"{data.get('format')!r}, version={data.get('version')!r}")
        return cls(list(data["chars"]))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _chunks(text: str, size: int) -> Iterator[str]:
    """Pieces of about ``size`` characters cut only at :data:`_SAFE_BOUNDARY` points."""
    start = 0
    while start < len(text):
        match = _SAFE_BOUNDARY.search(text, start + size) if start + size < len(text) else None
        end = match.start() if match else len(text)
        yield text[start:end]
        start = end


class BPETokenizer(_SavedAsJson):
    """Byte-level BPE (a wrapped :class:`tokenizers.Tokenizer`).

    Args:
        tokenizer: a trained byte-level BPE ``tokenizers.Tokenizer``.
    """

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @staticmethod
    def check_vocab_size(vocab_size) -> int:
        """``vocab_size`` if it is an int >= :data:`MIN_BPE_VOCAB`, else ValueError."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
                or vocab_size < MIN_BPE_VOCAB:
            raise ValueError(f"BPE vocab_size={vocab_size!r} is invalid: it must be an int >= "
                             f"{MIN_BPE_VOCAB} (the 256 byte symbols plus at least one merge)")
        return vocab_size

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB) -> BPETokenizer:
        """Train on ``text`` (pass the TRAIN split) up to ``vocab_size`` tokens."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        cls.check_vocab_size(vocab_size)
        if not text:
            raise ValueError("cannot train a BPE tokenizer on empty text")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        # Chunks pre-tokenize exactly like the whole text (see _SAFE_BOUNDARY).
        tokenizer.train_from_iterator(_chunks(text, _CHUNK_CHARS), trainer=trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        """Bytes plus merges actually learned (at most the size asked for)."""
        return self.tokenizer.get_vocab_size()

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int64 array of shape ``(n_tokens,)``."""
        # Chunks are encoded in parallel by the Rust library; the result equals one call.
        encodings = self.tokenizer.encode_batch(list(_chunks(text, _CHUNK_CHARS)))
        return np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return self.encode_array(text).tolist()

    def decode(self, ids) -> str:
        """Text of ``ids`` (a sequence, array or 1-D tensor)."""
        ids = _as_id_list(ids)
        _check_ids(ids, self.vocab_size)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def to_json(self) -> str:
        """The saved form: the ``tokenizers`` JSON (``tokenizers.Tokenizer.from_file`` reads it)."""
        return self.tokenizer.to_str()

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def load_tokenizer_file(path: str | os.PathLike) -> CharTokenizer | BPETokenizer:
    """Read a file written by ``save``: a char tokenizer or a ``tokenizers`` BPE JSON.

    Raises:
        ValueError: the file is neither (the message names the path).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"tokenizer file {path} is not JSON: {error}") from error
    if isinstance(data, dict) and data.get("kind") == "char":
        try:
            return CharTokenizer.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"tokenizer file {path}: {error}") from error
    if isinstance(data, dict) and isinstance(data.get("model"), dict) \
            and data["model"].get("type") == "BPE":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(text))
    raise ValueError(f"tokenizer file {path} is neither a char tokenizer nor a byte-level BPE "
                     f"tokenizers JSON")


def tokenizer_key(kind: str, corpus: Corpus, vocab_size: int | None = None) -> str:
    """Cache key ``<corpus>-<kind>[<vocab_size>]-v<format>-<first 16 hex of corpus.digest>``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", corpus.name)
    size = "" if vocab_size is None else str(vocab_size)
    return f"{name}-{kind}{size}-v{FORMAT_VERSION}-{corpus.digest[:16]}"


def get_tokenizer(kind: str, corpus: Corpus, vocab_size: int | None = None,
                  cache: Path | None = None) -> CharTokenizer | BPETokenizer:
    """Train a tokenizer on ``corpus.train``, or load it from the cache.

    Args:
        kind: one of :data:`TOKENIZER_KINDS`.
        corpus: the corpus; only its train split is used for training.
        vocab_size: BPE vocabulary size (default :data:`DEFAULT_BPE_VOCAB`, at least
            :data:`MIN_BPE_VOCAB`); must be ``None`` for ``char`` (its vocabulary is the
            train split's characters).
        cache: folder of tokenizer files; default ``cache_dir() / "tokenizers"``.

    Returns:
        The tokenizer; also saved as ``<cache>/<tokenizer_key(...)>.json``.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; allowed: {list(TOKENIZER_KINDS)}")
    if kind == "char":
        if vocab_size is not None:
            raise ValueError(f"vocab_size={vocab_size!r} applies only to 'bpe'; the char "
                             f"vocabulary is the train split's characters (pass None)")
    else:
        vocab_size = BPETokenizer.check_vocab_size(
            DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size)
    folder = Path(cache) if cache is not None else cache_dir() / "tokenizers"
    path = folder / f"{tokenizer_key(kind, corpus, vocab_size)}.json"
    if path.is_file():
        try:
            tokenizer = load_tokenizer_file(path)
            if tokenizer.kind == kind:
                return tokenizer
            raise ValueError(f"holds a {tokenizer.kind} tokenizer, expected {kind}")
        except Exception as error:  # a damaged cache entry is rebuilt, never fatal
            warnings.warn(f"ignoring unreadable cached tokenizer {path} ({error}); retraining",
                          stacklevel=2)
    if kind == "char":
        tokenizer = CharTokenizer.train(corpus.train)
    else:
        tokenizer = BPETokenizer.train(corpus.train, vocab_size)
    tokenizer.save(path)
    return tokenizer
