"""Greedy and beam-search decoding for encoder-decoder models.

Works with any model that offers (as :class:`~sparse_spectral.models.transformer.
TranslationTransformer` does)::

    memory, src_mask = model.encode(src)                       # src (B, S)
    logits = model.decode(tokens, memory, src_mask, last_only=True)   # (B, 1, V)

Conventions (OpenNMT/fairseq, as in HyboNet's evaluation, reference section 3.7):

* Output length ``L`` counts generated tokens including the final ``<eos>``. Sentence ``b``
  may generate at most ``max_len[b] = floor(max_len_a * src_len[b] + max_len_b)`` tokens
  (``src_len`` counts its real tokens, ``<eos>`` included); at that length only ``<eos>``
  is allowed, so every hypothesis ends with ``<eos>``.
* Scores are sums of the model's log-probabilities (``log_softmax`` of the logits). The
  ``banned`` ids (``<pad>``, ``<bos>``) are never generated.
* Beam search ranks finished hypotheses by ``score / lp(L)`` with GNMT's length penalty
  ``lp(L) = ((5 + L) / 6) ** alpha`` (Wu et al. 2016; ``alpha = 0``: raw log-probability).
  A sentence stops once ``beam_size`` hypotheses have finished (fairseq's rule); a candidate
  ending in ``<eos>`` finishes only if it ranks among the top ``beam_size`` candidates.
  With ``beam_size = 1`` this is exactly greedy search.

Models that offer incremental decoding (``start_decoding(memory, src_mask) -> state``,
``decode_step(last_tokens, state) -> (N, V)`` logits and ``state.select(rows)``) are run one
position per step with cached keys and values; other models re-run ``decode`` over the
whole prefix at every step. Both give the same scores up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["beam_search", "greedy_search", "length_penalty", "max_lengths"]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ``((5 + length) / 6) ** alpha``."""
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_mask: torch.Tensor, a: float, b: float, cap: int | None = None) -> list[int]:
    """Per-sentence ``floor(a * src_len + b)`` (at least 1, at most ``cap``)."""
    lengths = src_mask.sum(dim=1).tolist()
    out = [max(1, math.floor(a * n + b)) for n in lengths]
    return [min(n, cap) for n in out] if cap is not None else out


def _check(beam_size: int, alpha: float, a: float, b: float) -> None:
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r} must be an int >= 1")
    if not alpha >= 0:
        raise ValueError(f"length_penalty alpha={alpha!r} must be >= 0")
    if not (a >= 0 and b >= 0 and a + b > 0):
        raise ValueError(f"max_len_a={a!r} and max_len_b={b!r} must be >= 0, not both 0")


class _PrefixDecoder:
    """Re-runs ``model.decode`` over the whole prefix (any encoder-decoder)."""

    def __init__(self, model, memory, src_mask):
        self.model, self.memory, self.src_mask = model, memory, src_mask

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, t) -> (N, V)
        return self.model.decode(tokens, self.memory, self.src_mask, last_only=True)[:, -1]

    def select(self, rows: torch.Tensor, same_source: bool = False) -> None:
        if not same_source:
            self.memory, self.src_mask = self.memory[rows], self.src_mask[rows]


class _CachedDecoder:
    """Feeds one token per step through ``model.decode_step`` (cached keys and values)."""

    def __init__(self, model, memory, src_mask):
        self.model, self.state = model, model.start_decoding(memory, src_mask)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:  # (N, t) -> (N, V)
        return self.model.decode_step(tokens[:, -1:], self.state)

    def select(self, rows: torch.Tensor, same_source: bool = False) -> None:
        self.state = self.state.select(rows, same_source)


def _decoder(model, memory, src_mask):
    cached = hasattr(model, "start_decoding") and hasattr(model, "decode_step")
    return (_CachedDecoder if cached else _PrefixDecoder)(model, memory, src_mask)


def _next_log_probs(decoder, tokens, banned, eos_id, forced_eos):
    """``(N, V)`` log-probabilities of the next token, with bans and forced ``<eos>``."""
    logp = torch.log_softmax(decoder.logits(tokens).float(), dim=-1)
    if banned:
        logp[:, list(banned)] = -math.inf
    if forced_eos.any():
        eos = logp[forced_eos, eos_id].clone()
        logp[forced_eos] = -math.inf
        logp[forced_eos, eos_id] = eos
    return logp


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, *, bos_id: int, eos_id: int,
                  banned: Sequence[int] = (), max_len_a: float = 1.2, max_len_b: float = 10,
                  max_positions: int | None = None) -> list[list[int]]:
    """Pick the most probable token at every step.

    Args:
        model: encoder-decoder (see the module docstring), in eval mode.
        src: ``(B, S)`` source ids, right-padded.
        bos_id: decoder start id.
        eos_id: end id.
        banned: ids never generated (``<pad>``, ``<bos>``).
        max_len_a, max_len_b: length limit ``floor(a * src_len + b)``.
        max_positions: the decoder's longest input; caps the output length.

    Returns:
        For each sentence, the generated ids without ``<bos>`` and ``<eos>``.
    """
    _check(1, 0.0, max_len_a, max_len_b)
    memory, src_mask = model.encode(src)
    limits = max_lengths(src_mask, max_len_a, max_len_b,
                         None if max_positions is None else max_positions - 1)
    decoder = _decoder(model, memory, src_mask)
    live = torch.arange(src.shape[0])  # sentences still decoding, in decoder-row order
    tokens = torch.full((len(live), 1), bos_id, dtype=torch.long, device=src.device)
    limit = torch.tensor(limits)
    outputs: list[list[int]] = [[] for _ in range(src.shape[0])]
    for t in range(1, max(limits) + 1):
        logp = _next_log_probs(decoder, tokens, banned, eos_id,
                               (limit[live] <= t).to(src.device))
        choice = logp.argmax(dim=-1).cpu()
        for row, token in zip(live.tolist(), choice.tolist()):
            if token != eos_id:
                outputs[row].append(token)
        going = choice.ne(eos_id)
        if not going.any():
            break
        keep = going.nonzero().flatten()
        live = live[keep]
        tokens = torch.cat([tokens, choice[:, None].to(src.device)], dim=1)[keep.to(src.device)]
        decoder.select(keep.to(src.device))
    return outputs


@torch.no_grad()
def beam_search(model, src: torch.Tensor, *, beam_size: int, bos_id: int, eos_id: int,
                alpha: float = 1.0, banned: Sequence[int] = (), max_len_a: float = 1.2,
                max_len_b: float = 10, max_positions: int | None = None) -> list[list[int]]:
    """Beam search with GNMT length penalty over a batch of sentences.

    Args:
        model: encoder-decoder (see the module docstring), in eval mode.
        src: ``(B, S)`` source ids, right-padded.
        beam_size: hypotheses kept per sentence (``K``).
        bos_id: decoder start id.
        eos_id: end id.
        alpha: length-penalty exponent (0: none).
        banned: ids never generated (``<pad>``, ``<bos>``).
        max_len_a, max_len_b: length limit ``floor(a * src_len + b)``.
        max_positions: the decoder's longest input; caps the output length.

    Returns:
        For each sentence, the best hypothesis's ids without ``<bos>`` and ``<eos>``.
    """
    _check(beam_size, alpha, max_len_a, max_len_b)
    k = beam_size
    memory, src_mask = model.encode(src)
    limits = max_lengths(src_mask, max_len_a, max_len_b,
                         None if max_positions is None else max_positions - 1)
    n = src.shape[0]
    decoder = _decoder(model, memory.repeat_interleave(k, dim=0),
                       src_mask.repeat_interleave(k, dim=0))
    forced = torch.tensor(limits).repeat_interleave(k)
    tokens = torch.full((n * k, 1), bos_id, dtype=torch.long, device=src.device)
    scores = torch.full((n, k), -math.inf)
    scores[:, 0] = 0.0  # one live hypothesis per sentence at the start
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n)]
    done = [False] * n
    for t in range(1, max(limits) + 1):
        logp = _next_log_probs(decoder, tokens, banned, eos_id,
                               (forced <= t).to(src.device)).cpu()
        vocab = logp.shape[1]
        candidates = (scores[:, :, None] + logp.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_ids = candidates.topk(min(2 * k, k * vocab), dim=1)
        # Python lists: per-element tensor indexing would dominate the loop below.
        top_list, parents, words = (top_scores.tolist(), (top_ids // vocab).tolist(),
                                    (top_ids % vocab).tolist())
        keep_parent = torch.zeros(n, k, dtype=torch.long)
        keep_word = torch.full((n, k), eos_id, dtype=torch.long)
        new_scores = torch.full((n, k), -math.inf)
        for b in range(n):
            if done[b]:
                continue
            live = 0
            for j, score in enumerate(top_list[b]):
                if score == -math.inf:
                    break
                parent, word = parents[b][j], words[b][j]
                if word == eos_id:
                    if j < k:
                        prefix = tokens[b * k + parent, 1:].tolist()
                        finished[b].append((score / length_penalty(t, alpha), prefix))
                elif live < k:
                    keep_parent[b, live], keep_word[b, live] = parent, word
                    new_scores[b, live] = score
                    live += 1
            if len(finished[b]) >= k or t >= limits[b] or live == 0:
                done[b] = True
                new_scores[b] = -math.inf
        if all(done):
            break
        rows = (torch.arange(n)[:, None] * k + keep_parent).flatten().to(src.device)
        tokens = torch.cat([tokens[rows], keep_word.flatten()[:, None].to(src.device)], dim=1)
        decoder.select(rows, same_source=True)  # parents come from the same sentence
        scores = new_scores
    # max() keeps the first of equal scores: the earlier-finished (shorter) hypothesis.
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
