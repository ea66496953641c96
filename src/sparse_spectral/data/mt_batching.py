"""Token-based batching of sentence pairs (fairseq's ``--max-tokens``).

A pair with ``a`` source and ``b`` target BPE tokens becomes::

    src      a + 1 tokens: the source ids, <eos>
    tgt_in   b + 1 tokens: <bos>, the target ids      (decoder input)
    tgt_out  b + 1 tokens: the target ids, <eos>      (what the decoder predicts)

:func:`token_batches` sorts pairs by length and packs neighbours into a batch while its
padded size ``count * max(longest src, longest tgt)`` stays within ``max_tokens``, so every
batch costs about the same and carries little padding. :class:`EpochBatches` keeps those
batches fixed and visits them in a new order each epoch; the order is a pure function of
``(seed, epoch)``, so batch number ``i`` is the same whenever it is asked for (what makes a
resumed run exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SpecialIds:
    """The ids that frame and pad sentences."""

    pad: int
    bos: int
    eos: int


@dataclass(frozen=True)
class Batch:
    """One padded batch.

    Attributes:
        src: ``(B, S)`` int64 source ids, right-padded.
        tgt_in: ``(B, T)`` int64 decoder inputs, right-padded.
        tgt_out: ``(B, T)`` int64 next-token targets, right-padded.
        indices: ``(B,)`` the pairs' positions in their split.
        target_tokens: non-padding entries of ``tgt_out`` (the tokens the loss counts).
    """

    src: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    indices: np.ndarray
    target_tokens: int


def pad_rows(rows: Sequence[np.ndarray], pad_id: int) -> torch.Tensor:
    """``(len(rows), longest)`` int64 tensor of the rows, right-padded with ``pad_id``."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return torch.from_numpy(out)


def collate(source: Sequence[np.ndarray], target: Sequence[np.ndarray],
            indices: Sequence[int], ids: SpecialIds) -> Batch:
    """The padded batch of pairs ``indices`` (BPE ids without specials on both sides)."""
    indices = np.asarray(indices, dtype=np.int64)
    src = pad_rows([np.append(source[i], ids.eos) for i in indices], ids.pad)
    tgt_in = pad_rows([np.insert(target[i], 0, ids.bos) for i in indices], ids.pad)
    tgt_out = pad_rows([np.append(target[i], ids.eos) for i in indices], ids.pad)
    tokens = int(sum(len(target[i]) + 1 for i in indices))
    return Batch(src, tgt_in, tgt_out, indices, tokens)


def sentence_share(src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor,
                   pad_id: int, index: int, count: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Part ``index`` of ``count`` of a padded batch, by sentences, and its loss weight.

    The ``B`` sentences are cut into ``count`` contiguous parts of ``B // count`` or one
    more; each part loses the trailing columns that are padding in all of its rows (the
    decoder is causal and padded source positions are masked, so the part's losses are
    those of the whole batch, to rounding).

    Args:
        src: ``(B, S)``; tgt_in, tgt_out: ``(B, T)``; every tensor right-padded.
        index, count: this part and the number of parts (``count <= B``).

    Returns:
        ``(src, tgt_in, tgt_out, weight)`` of the part: ``(b, s)``, ``(b, t)``, ``(b, t)``
        and ``weight = count * part_tokens / batch_tokens``, so that the mean over the
        parts of ``weight`` times the part's mean token loss is the batch's mean token loss.
    """
    if not 0 <= index < count <= src.shape[0]:
        raise ValueError(f"part {index} of {count} of a batch of {src.shape[0]} sentences")
    rows = torch.tensor_split(torch.arange(src.shape[0]), count)[index]
    first, last = int(rows[0]), int(rows[-1]) + 1
    src, tgt_in, tgt_out_part = (t[first:last] for t in (src, tgt_in, tgt_out))
    src = src[:, :_width(src, pad_id)]
    width = _width(tgt_out_part, pad_id)
    part_tokens = int((tgt_out_part != pad_id).sum())
    weight = count * part_tokens / int((tgt_out != pad_id).sum())
    return src, tgt_in[:, :width], tgt_out_part[:, :width], weight


def _width(rows: torch.Tensor, pad_id: int) -> int:
    """The columns up to the last one with a token that is not padding, in any row."""
    used = (rows != pad_id).any(dim=0).nonzero()
    return int(used[-1]) + 1 if len(used) else 1


def token_batches(source_lengths: Sequence[int], target_lengths: Sequence[int],
                  max_tokens: int) -> list[np.ndarray]:
    """Group pairs into batches of at most ``max_tokens`` padded tokens per side.

    Pairs are sorted by (target length, source length, index) and packed greedily, so the
    result is deterministic. Lengths count the added ``<eos>``/``<bos>`` (``+ 1``).

    Args:
        source_lengths: BPE tokens of each source sentence (without specials).
        target_lengths: BPE tokens of each target sentence (without specials).
        max_tokens: bound on ``batch size * longest sentence`` on either side.

    Returns:
        Index arrays, one per batch, covering every pair once, in length order.

    Raises:
        ValueError: ``max_tokens`` < 1, mismatched lengths, or a pair longer than
            ``max_tokens`` on its own (the message names it).
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} must be an int >= 1")
    src = np.asarray(source_lengths, dtype=np.int64) + 1
    tgt = np.asarray(target_lengths, dtype=np.int64) + 1
    if src.shape != tgt.shape:
        raise ValueError(f"{len(src)} source lengths but {len(tgt)} target lengths")
    longest = np.maximum(src, tgt)
    too_long = np.flatnonzero(longest > max_tokens)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(f"max_tokens={max_tokens} is too small: pair {i} alone needs "
                         f"{int(longest[i])} tokens (source {int(src[i])}, target "
                         f"{int(tgt[i])}, counting <eos>/<bos>); raise max_tokens")
    order = np.lexsort((np.arange(len(src)), src, tgt))  # last key sorts first
    batches, current, width = [], [], 0
    for i in order:
        new_width = max(width, int(longest[i]))
        if current and new_width * (len(current) + 1) > max_tokens:
            batches.append(np.asarray(current, dtype=np.int64))
            current, new_width = [], int(longest[i])
        current.append(int(i))
        width = new_width
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


class EpochBatches:
    """Fixed token batches visited in a fresh random order each epoch.

    Args:
        source: BPE ids of each source sentence (no specials).
        target: BPE ids of each target sentence (no specials).
        ids: pad/bos/eos ids.
        max_tokens: padded tokens per side per batch (see :func:`token_batches`).
        seed: seeds the per-epoch orders.
    """

    def __init__(self, source: Sequence[np.ndarray], target: Sequence[np.ndarray],
                 ids: SpecialIds, max_tokens: int, seed: int = 0):
        self.source, self.target, self.ids, self.seed = source, target, ids, seed
        self.batches = token_batches([len(s) for s in source], [len(t) for t in target],
                                     max_tokens)
        self.target_tokens = int(sum(len(t) + 1 for t in target))

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.batches)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Permutation of batch numbers for ``epoch`` (0-based), keyed by ``(seed, epoch)``."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.batches))

    def batch(self, index: int) -> Batch:
        """Training batch number ``index`` (0-based, counting across epochs)."""
        epoch, position = divmod(index, len(self.batches))
        chosen = self.batches[int(self.epoch_order(epoch)[position])]
        return collate(self.source, self.target, chosen, self.ids)
