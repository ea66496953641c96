"""Greedy and beam search: beam 1 is greedy, a wide beam is exhaustive, batching is invisible."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sparse_spectral.models.decoding import beam_search, greedy_search, length_penalty, max_lengths
from sparse_spectral.models.transformer import TransformerConfig, TranslationTransformer

PAD, BOS, EOS = 0, 1, 2
BANNED = (PAD, BOS)


def tiny_model(vocab: int = 12, seed: int = 0) -> TranslationTransformer:
    torch.manual_seed(seed)
    model = TranslationTransformer(TransformerConfig(
        vocab_size=vocab, pad_id=PAD, d_model=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=2, dropout=0.0, tie_embeddings=False))
    with torch.no_grad():  # larger logits: distinct, confident choices, some early <eos>
        model.generator.weight.mul_(6.0)
    return model.eval()


def sources(seed: int = 0, vocab: int = 12) -> torch.Tensor:
    """Four right-padded sources of lengths 5, 3, 6 and 1, each closed by <eos>."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in (4, 2, 5, 0):
        rows.append(torch.randint(3, vocab, (n,), generator=g).tolist() + [EOS])
    width = max(map(len, rows))
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


class BigramModel:
    """Next-token logits from a fixed table indexed by the previous token (no attention)."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def encode(self, src):
        return src.float()[..., None], src.ne(PAD)

    def decode(self, tokens, memory, src_mask, last_only=True):
        return self.table[tokens[:, -1]][:, None]


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 4])  # seeds where some sentences end early
def test_beam_one_equals_greedy(seed, alpha):
    model, src = tiny_model(seed=seed), sources(seed)
    common = dict(bos_id=BOS, eos_id=EOS, banned=BANNED, max_len_a=1.0, max_len_b=3)
    greedy = greedy_search(model, src, **common)
    assert greedy == beam_search(model, src, beam_size=1, alpha=alpha, **common)
    assert any(len(h) < L - 1 for h, L in zip(greedy, max_lengths(src.ne(PAD), 1.0, 3))), \
        "no hypothesis ended with <eos> before its length limit: the case is too easy"


@torch.no_grad()
def _brute_force(model, src_row: torch.Tensor, max_len: int, alpha: float) -> list[int]:
    """Best ``score / lp(L)`` over every word sequence closed by <eos>, ``L <= max_len``."""
    words = [i for i in range(model.config.vocab_size) if i not in (PAD, BOS, EOS)]
    best, best_score = None, -math.inf
    for length in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=length - 1):
            tgt_in = torch.tensor([[BOS, *seq]])
            logp = torch.log_softmax(model(src_row[None], tgt_in)[0].float(), dim=-1)
            score = float(sum(logp[i, t] for i, t in enumerate([*seq, EOS])))
            if score / length_penalty(length, alpha) > best_score:
                best, best_score = list(seq), score / length_penalty(length, alpha)
    return best


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
def test_wide_beam_is_exhaustive(alpha):
    """Two words, at most 3 tokens: a beam of 8 keeps every prefix and finds the optimum."""
    model = tiny_model(vocab=5, seed=3)
    with torch.no_grad():
        model.generator.weight.div_(6.0)  # flat distributions: length matters
    src = torch.tensor([[3, 4, EOS], [4, EOS, PAD]])
    limits = max_lengths(src.ne(PAD), 0.0, 3)
    assert limits == [3, 3]
    found = beam_search(model, src, beam_size=8, bos_id=BOS, eos_id=EOS, alpha=alpha,
                        banned=BANNED, max_len_a=0.0, max_len_b=3)
    for b in range(2):
        assert found[b] == _brute_force(model, src[b, :int(src[b].ne(PAD).sum())], 3, alpha)


def test_length_penalty_changes_the_winner():
    """With alpha 0 the short hypothesis wins; a strong penalty prefers the long one."""
    table = torch.full((5, 5), -30.0)
    table[BOS, EOS], table[BOS, 3] = math.log(0.4), math.log(0.6)   # end now: 0.4
    table[3, EOS] = math.log(0.5)                                    # "3 <eos>": 0.3
    table[3, 4] = math.log(0.5)
    table[4, EOS] = 0.0
    model, src = BigramModel(table), torch.tensor([[3, EOS]])
    common = dict(beam_size=2, bos_id=BOS, eos_id=EOS, banned=BANNED, max_len_a=0.0,
                  max_len_b=4)
    assert beam_search(model, src, alpha=0.0, **common) == [[]]
    assert beam_search(model, src, alpha=4.0, **common) == [[3]]


@pytest.mark.parametrize("beam", [1, 3])
def test_batching_does_not_change_results(beam):
    model, src = tiny_model(seed=4), sources(4)
    common = dict(bos_id=BOS, eos_id=EOS, banned=BANNED, max_len_a=1.2, max_len_b=4)
    batched = beam_search(model, src, beam_size=beam, alpha=1.0, **common)
    for b in range(src.shape[0]):
        row = src[b:b + 1, :int(src[b].ne(PAD).sum())]  # unpadded
        assert beam_search(model, row, beam_size=beam, alpha=1.0, **common)[0] == batched[b]


def test_length_limit_and_banned_tokens():
    """A model that never wants <eos> stops at floor(a * src_len + b) tokens, <eos> included."""
    table = torch.zeros(6, 6)
    table[:, EOS] = -50.0
    table[:, PAD] = table[:, BOS] = 50.0  # banned: must never be generated
    model, src = BigramModel(table), torch.tensor([[3, 4, 5, EOS], [3, EOS, PAD, PAD]])
    for search in (lambda **kw: greedy_search(model, src, **kw),
                   lambda **kw: beam_search(model, src, beam_size=3, alpha=1.0, **kw)):
        out = search(bos_id=BOS, eos_id=EOS, banned=BANNED, max_len_a=1.5, max_len_b=1)
        assert [len(h) for h in out] == [math.floor(1.5 * 4 + 1) - 1, math.floor(1.5 * 2 + 1) - 1]
        assert all(t not in (PAD, BOS, EOS) for h in out for t in h)


def test_bad_settings_are_rejected():
    model, src = tiny_model(), sources()
    with pytest.raises(ValueError, match="beam_size=0"):
        beam_search(model, src, beam_size=0, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="alpha=-1"):
        beam_search(model, src, beam_size=2, alpha=-1, bos_id=BOS, eos_id=EOS)
    with pytest.raises(ValueError, match="max_len_a=0"):
        greedy_search(model, src, bos_id=BOS, eos_id=EOS, max_len_a=0, max_len_b=0)


def test_length_penalty_formula():
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(1, 0.6) == pytest.approx(1.0)


class PrefixOnly:
    """The same model without incremental decoding: decoding re-runs the whole prefix."""

    def __init__(self, model):
        self.model = model

    def encode(self, src):
        return self.model.encode(src)

    def decode(self, *args, **kwargs):
        return self.model.decode(*args, **kwargs)


def test_cached_steps_match_the_full_decoder():
    model, src = tiny_model(seed=5), sources(5)
    memory, src_mask = model.encode(src)
    tgt = torch.randint(3, 12, (src.shape[0], 6), generator=torch.Generator().manual_seed(5))
    tgt[:, 0] = BOS
    full = model.decode(tgt, memory, src_mask)
    state = model.start_decoding(memory, src_mask)
    steps = [model.decode_step(tgt[:, t:t + 1], state) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    rows = torch.tensor([2, 2, 0])  # reordering keeps each row's own history
    torch.testing.assert_close(model.decode_step(tgt[rows, :1], state.select(rows)),
                               model.decode(torch.cat([tgt[rows], tgt[rows, :1]], 1),
                                            memory[rows], src_mask[rows])[:, -1],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_and_prefix_decoding_agree(beam):
    model, src = tiny_model(seed=6), sources(6)
    common = dict(bos_id=BOS, eos_id=EOS, banned=BANNED, max_len_a=1.2, max_len_b=4)
    search = (lambda m: greedy_search(m, src, **common)) if beam == 1 else \
        (lambda m: beam_search(m, src, beam_size=beam, alpha=1.0, **common))
    assert search(model) == search(PrefixOnly(model))
