"""Token ids per split, training batches that depend only on the step, and evaluation.

Training batches (:func:`training_batch`) draw ``batch_size`` random windows from a fresh
CPU generator seeded with ``counter_seed(seed, step)``: a batch is a pure function of
``(ids, step, batch_size, block_size, seed)``, so resuming at step ``s`` needs no loader
state and reproduces an uninterrupted run exactly.

Evaluation (:func:`evaluation_blocks`, :func:`evaluate_lm`) covers the whole split with
non-overlapping windows, the last one partial: every token after the first is predicted
exactly once. The reported loss is the mean token negative log-likelihood over the whole
split, ``sum of all token NLLs / number of predicted tokens``, and perplexity is its
``exp``. This is NOT a mean of per-batch means (which would over-weight the short last
window).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from .._util.atomic import atomic_write
from .._util.seeding import counter_seed
from .corpus import SPLITS, Corpus
from .paths import cache_dir
from .tokenizer import Tokenizer

ENCODING_VERSION = 1


def _encoded_path(corpus: Corpus, tokenizer: Tokenizer, folder: Path) -> Path:
    key = hashlib.sha256(f"{corpus.digest}:{tokenizer.fingerprint}:{ENCODING_VERSION}".encode())
    return folder / f"{tokenizer.kind}{tokenizer.vocab_size}-{key.hexdigest()[:24]}.pt"


def _load_encoded(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(stored, dict) and set(stored) == set(SPLITS) \
                and all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in stored.values()):
            return {name: stored[name].long() for name in SPLITS}
        raise ValueError("unexpected contents")
    except Exception as error:  # a damaged cache entry is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable cached token ids {path} ({error}); re-encoding",
                      stacklevel=3)
        return None


def encode_splits(corpus: Corpus, tokenizer: Tokenizer, cache: Path | None = None,
                  use_cache: bool = True) -> dict[str, torch.Tensor]:
    """Encode every split of ``corpus`` with ``tokenizer``.

    Args:
        corpus: the corpus.
        tokenizer: any tokenizer of :mod:`.tokenizer`.
        cache: folder of encoded splits; default ``cache_dir() / "tokens"``. Files are
            ``<kind><vocab>-<key>.pt`` with ``key`` a hash of ``corpus.digest``, the
            tokenizer's fingerprint and the encoding version; ids are stored as int32.
        use_cache: read and write that folder (``False``: always encode, write nothing).

    Returns:
        ``{"train", "validation", "test"}`` -> 1-D int64 tensors of token ids, shape
        ``(n_tokens,)``.
    """
    path = None
    if use_cache:
        folder = Path(cache) if cache is not None else cache_dir() / "tokens"
        path = _encoded_path(corpus, tokenizer, folder)
        if path.is_file():
            loaded = _load_encoded(path)
            if loaded is not None:
                return loaded
    splits: dict[str, torch.Tensor] = {}
    for name in SPLITS:
        text = corpus.split(name)
        shared = next((splits[s] for s in splits if corpus.split(s) == text), None)
        # test may be the validation text itself (tinyshakespeare): encode it once
        splits[name] = shared if shared is not None \
            else torch.from_numpy(tokenizer.encode_array(text))
    if path is not None:
        if tokenizer.vocab_size > torch.iinfo(torch.int32).max:
            raise ValueError(f"vocab_size={tokenizer.vocab_size} does not fit int32")
        stored = {name: ids.to(torch.int32) for name, ids in splits.items()}
        atomic_write(path, lambda tmp: torch.save(stored, tmp))
    return splits


def _check_ids(ids: torch.Tensor) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got "
                         f"{getattr(ids, 'shape', type(ids).__name__)}")


def training_batch(ids: torch.Tensor, step: int, batch_size: int, block_size: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows for one step, reproducible from ``(seed, step)`` alone.

    Args:
        ids: ``(N,)`` token ids of the training split.
        step: batch index (e.g. the optimizer step, or step and micro-batch combined).
        batch_size: ``B``, windows per batch.
        block_size: ``T``, tokens per window.
        seed: run seed.

    Returns:
        ``x (B, T)`` and ``y (B, T)``, int64 on ``ids.device``, with
        ``y[b, t] = ids[start_b + t + 1]`` and ``x[b, t] = ids[start_b + t]``: targets are
        the inputs shifted by one. Starts are uniform in ``[0, N - T - 1]``.

    Raises:
        ValueError: ``N < T + 1`` (no full window), or a non-positive size.
    """
    _check_ids(ids)
    for name, value in (("batch_size", batch_size), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    n = ids.numel()
    if n < block_size + 1:
        raise ValueError(f"the split has {n} tokens, fewer than block_size + 1 = "
                         f"{block_size + 1}: use a smaller block_size or more text")
    generator = torch.Generator().manual_seed(counter_seed(seed, step))
    starts = torch.randint(0, n - block_size, (batch_size,), generator=generator)
    index = (starts[:, None] + torch.arange(block_size)).to(ids.device)  # (B, T)
    return ids[index].long(), ids[index + 1].long()


def evaluation_blocks(ids: torch.Tensor,
                      block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the whole split.

    Args:
        ids: ``(N,)`` token ids, ``N >= 2``.
        block_size: ``T``, the longest window.

    Returns:
        ``[(x, y), ...]`` with ``x = ids[i : i + t]`` and ``y = ids[i + 1 : i + 1 + t]`` for
        ``i = 0, T, 2T, ...``; every window has ``t = T`` except possibly the last
        (``1 <= t <= T``). The ``y`` windows tile ``ids[1:]``: each of the ``N - 1``
        predictable tokens is a target exactly once, with up to ``T - 1`` tokens of context
        from its own window.
    """
    _check_ids(ids)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be an int >= 1")
    n = ids.numel()
    if n < 2:
        raise ValueError(f"the split has {n} tokens; evaluation needs at least 2")
    return [(ids[i: min(i + block_size, n - 1)], ids[i + 1: min(i + block_size, n - 1) + 1])
            for i in range(0, n - 1, block_size)]


def perplexity(sum_nll: float, count: int) -> float:
    """``exp(sum_nll / count)``: perplexity from a summed token NLL (nats) and token count."""
    if count <= 0:
        raise ValueError(f"count={count} must be >= 1 (the number of predicted tokens)")
    try:
        return math.exp(sum_nll / count)
    except OverflowError:
        return math.inf


@torch.no_grad()
def evaluate_lm(model_fn: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor,
                block_size: int, batch_size: int,
                device: torch.device | str | None = None) -> tuple[float, int, float]:
    """Mean token NLL, token count and perplexity of a causal LM over a whole split.

    Args:
        model_fn: maps inputs ``(B, t)`` int64 to logits ``(B, t, V)``.
        ids: ``(N,)`` token ids of the held-out split.
        block_size: ``T``, the window length (the model's context).
        batch_size: full windows per call; the last, partial window is a batch of its own.
        device: where inputs go before ``model_fn`` (default ``ids.device``).

    Returns:
        ``(mean_nll, count, ppl)``: ``mean_nll = sum of token NLLs / count`` over all
        ``count = N - 1`` predicted tokens (not a mean of batch means), and
        ``ppl = exp(mean_nll)``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    blocks = evaluation_blocks(ids, block_size)
    device = torch.device(device) if device is not None else ids.device
    full = [b for b in blocks if b[0].numel() == block_size]
    batches = [full[i: i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[b] for b in blocks if b[0].numel() != block_size]
    total, count = 0.0, 0
    for batch in batches:
        x = torch.stack([b[0] for b in batch]).to(device)  # (B, t)
        y = torch.stack([b[1] for b in batch])
        logits = model_fn(x)
        if logits.dim() != 3 or logits.shape[:2] != x.shape:
            raise ValueError(f"model_fn returned shape {tuple(logits.shape)} for inputs "
                             f"{tuple(x.shape)}; expected (B, t, V)")
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                              y.to(logits.device).reshape(-1).long(), reduction="sum")
        total += float(nll)  # accumulate in Python float64, not in the logits' dtype
        count += y.numel()
    return total / count, count, perplexity(total, count)
