"""A joint subword vocabulary for translation: the package's byte-level BPE plus specials.

One BPE is trained on the source and target training sentences together (joint BPE, as
HyboNet's IWSLT setup and fairseq's Multi30k/IWSLT recipes do), through
:func:`~sparse_spectral.data.tokenizer.get_tokenizer`, so it is trained once and cached in
``<cache>/tokenizers/`` like the language-model tokenizers. The BPE has no special tokens;
this wrapper appends three ids after its ``n`` tokens::

    0 .. n-1   BPE tokens (bytes and merges)
    n          <pad>
    n + 1      <bos>   (decoder start)
    n + 2      <eos>   (end of sentence; also closes every source sentence)

Byte-level BPE encodes any text without unknowns and decodes back exactly, so decoded
hypotheses are plain detokenised text, ready for sacreBLEU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .corpus import Corpus
from .tokenizer import BPETokenizer, get_tokenizer

SPECIALS = ("<pad>", "<bos>", "<eos>")


class JointVocabulary:
    """Byte-level BPE ids followed by ``<pad>``, ``<bos>`` and ``<eos>``.

    Args:
        bpe: the trained byte-level BPE shared by both languages.
    """

    def __init__(self, bpe: BPETokenizer):
        self.bpe = bpe
        n = bpe.vocab_size
        self.pad_id, self.bos_id, self.eos_id = n, n + 1, n + 2

    @property
    def vocab_size(self) -> int:
        """BPE tokens plus the three specials."""
        return self.bpe.vocab_size + len(SPECIALS)

    @property
    def fingerprint(self) -> str:
        return self.bpe.fingerprint

    def encode_batch(self, sentences: Sequence[str]) -> list[np.ndarray]:
        """BPE ids of each sentence (int64 arrays of shape ``(n_tokens,)``, no specials)."""
        encodings = self.bpe.tokenizer.encode_batch(list(sentences))
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def decode(self, ids) -> str:
        """Text of ``ids`` (sequence, array or 1-D tensor); special ids are dropped."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.bpe.decode([int(i) for i in ids if int(i) < self.pad_id])

    def __repr__(self) -> str:
        return f"JointVocabulary(bpe={self.bpe.vocab_size}, specials={SPECIALS})"


def get_joint_vocabulary(name: str, source: Sequence[str], target: Sequence[str],
                         vocab_size: int, cache: Path | None = None) -> JointVocabulary:
    """Train (or load from the cache) a BPE on ``source`` and ``target`` training sentences.

    Args:
        name: corpus name in the cache key, e.g. ``"multi30k-de-en"``.
        source: training sentences of the source language.
        target: training sentences of the target language.
        vocab_size: BPE tokens (at least 257; the 256 bytes plus merges); the specials come
            on top, so the model's vocabulary is ``vocab_size + 3`` (or less if the corpus
            runs out of pairs to merge).
        cache: tokenizer folder (default ``<cache>/tokenizers``).
    """
    joint = "\n".join([*source, *target])
    # Only the train split trains the BPE; the other two fields just keep the key distinct.
    corpus = Corpus(name, train=joint, validation=name, test=name)
    return JointVocabulary(get_tokenizer("bpe", corpus, vocab_size=vocab_size, cache=cache))
