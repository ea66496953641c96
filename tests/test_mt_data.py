"""Multi30k reading, the joint BPE and token batching, on the real data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from sparse_spectral.data import DataUnavailableError
from sparse_spectral.data.bpe import get_joint_vocabulary
from sparse_spectral.data.mt_batching import EpochBatches, SpecialIds, collate, token_batches
from sparse_spectral.data.multi30k import SPLIT_FILES, ParallelText, load_multi30k
from sparse_spectral.data.tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def multi30k(reference_data):
    return load_multi30k(reference_data)


@pytest.fixture(scope="module")
def vocab(multi30k, tmp_path_factory):
    """A 600-token joint BPE on the first 2,000 training pairs, in a private cache."""
    part = multi30k["train"].head(2000)
    return get_joint_vocabulary("slice", part.source, part.target, 600,
                                cache=tmp_path_factory.mktemp("tok"))


def test_split_sizes_and_alignment(multi30k, reference_data):
    assert {k: len(v) for k, v in multi30k.items()} == \
        {"train": 29000, "validation": 1014, "test": 1000}
    train = multi30k["train"]
    assert train.source[0] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert train.target[0] == "Two young, White males are outside near many bushes."
    reverse = load_multi30k(reference_data, source="en", target="de")
    assert reverse["test"].source == multi30k["test"].target
    assert all(s and t for s, t in zip(train.source, train.target))


def test_missing_data_names_the_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    with pytest.raises(DataUnavailableError, match=r"--data-dir.*SST_DATA_DIR"):
        load_multi30k(None)
    (tmp_path / "multi30k").mkdir()
    with pytest.raises(DataUnavailableError, match=r"train\.de\.gz is missing.*--data-dir"):
        load_multi30k(tmp_path)
    monkeypatch.setenv("SST_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataUnavailableError, match="elsewhere/multi30k does not exist"):
        load_multi30k()


def test_wrong_pair_count_is_an_error(tmp_path):
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for stem, _ in SPLIT_FILES.values():
        for lang in ("de", "en"):
            with gzip.open(folder / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("ein Satz\n" * 10)
    with pytest.raises(ValueError, match=r"train\.de\.gz has 10 lines, expected 29,000"):
        load_multi30k(tmp_path)


def test_bad_language_pair(reference_data):
    with pytest.raises(ValueError, match=r"'de' -> 'de'.*de -> en or en -> de"):
        load_multi30k(reference_data, source="de", target="de")
    with pytest.raises(ValueError, match="must line up"):
        ParallelText(("a", "b"), ("a",))


def test_joint_bpe_round_trip_and_specials(multi30k, vocab):
    n = vocab.bpe.vocab_size
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.vocab_size) == (n, n + 1, n + 2, n + 3)
    sample = multi30k["validation"].head(300)
    for side in (sample.source, sample.target):  # unseen sentences, both languages
        encoded = vocab.encode_batch(side)
        assert all(ids.max() < n for ids in encoded)
        assert [vocab.decode(ids) for ids in encoded] == list(side)
    ids = vocab.encode_batch(["Ein Hund."])[0]
    assert vocab.decode([vocab.bos_id, *ids, vocab.eos_id, vocab.pad_id]) == "Ein Hund."
    # Merges learnt from both languages: frequent words of each are single tokens.
    assert len(vocab.encode_batch([" Hund"])[0]) == 1 and len(vocab.encode_batch([" dog"])[0]) == 1


def test_joint_bpe_is_cached(multi30k, tmp_path, monkeypatch):
    part = multi30k["train"].head(500)
    first = get_joint_vocabulary("c", part.source, part.target, 400, cache=tmp_path)
    assert len(list(tmp_path.glob("c-bpe400-*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached BPE should have been loaded")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    again = get_joint_vocabulary("c", part.source, part.target, 400, cache=tmp_path)
    assert again.fingerprint == first.fingerprint


def _encoded(multi30k, vocab, count=1500):
    part = multi30k["train"].head(count)
    return vocab.encode_batch(part.source), vocab.encode_batch(part.target)


def _padded(side, batches) -> int:
    return sum((max(len(side[i]) for i in chosen) + 1) * len(chosen) for chosen in batches)


def test_token_batches_cover_every_pair_within_budget(multi30k, vocab):
    src, tgt = _encoded(multi30k, vocab)
    batches = token_batches([len(s) for s in src], [len(t) for t in tgt], max_tokens=800)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(src)))
    for chosen in batches:
        width = max(max(len(src[i]), len(tgt[i])) + 1 for i in chosen)
        assert width * len(chosen) <= 800
    # Sorted by target length: consecutive batches hold consecutive target lengths ...
    spans = [(min(len(tgt[i]) for i in c), max(len(tgt[i]) for i in c)) for c in batches]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # ... so both sides carry far less padding than batches of the same sizes in random order.
    order = np.random.default_rng(0).permutation(len(src))
    sizes = np.cumsum([len(c) for c in batches])[:-1]
    shuffled = np.split(order, sizes)
    for side in (src, tgt):
        real = sum(len(x) + 1 for x in side)
        assert _padded(side, batches) - real < 0.5 * (_padded(side, shuffled) - real)


def test_collate_frames_and_pads(multi30k, vocab):
    src, tgt = _encoded(multi30k, vocab, 50)
    ids = SpecialIds(vocab.pad_id, vocab.bos_id, vocab.eos_id)
    batch = collate(src, tgt, [3, 7, 11], ids)
    for row, i in enumerate([3, 7, 11]):
        n, m = len(src[i]), len(tgt[i])
        assert batch.src[row, :n].tolist() == src[i].tolist()
        assert batch.src[row, n] == ids.eos and (batch.src[row, n + 1:] == ids.pad).all()
        assert batch.tgt_in[row, 0] == ids.bos
        assert batch.tgt_in[row, 1:m + 1].tolist() == batch.tgt_out[row, :m].tolist() \
            == tgt[i].tolist()
        assert batch.tgt_out[row, m] == ids.eos and (batch.tgt_out[row, m + 1:] == ids.pad).all()
    assert batch.target_tokens == sum(len(tgt[i]) + 1 for i in [3, 7, 11])


def test_epochs_reshuffle_reproducibly(multi30k, vocab):
    src, tgt = _encoded(multi30k, vocab)
    ids = SpecialIds(vocab.pad_id, vocab.bos_id, vocab.eos_id)
    batches = EpochBatches(src, tgt, ids, max_tokens=800, seed=3)
    n = len(batches)
    first = [tuple(batches.batch(i).indices) for i in range(n)]
    second = [tuple(batches.batch(n + i).indices) for i in range(n)]
    assert sorted(first) == sorted(second) and first != second
    assert sorted(i for b in first for i in b) == list(range(len(src)))
    again = EpochBatches(src, tgt, ids, max_tokens=800, seed=3)
    assert [tuple(again.batch(n + i).indices) for i in range(n)] == second  # resume-safe
    other = EpochBatches(src, tgt, ids, max_tokens=800, seed=4)
    assert [tuple(other.batch(i).indices) for i in range(n)] != first


def test_max_tokens_too_small_names_the_pair():
    with pytest.raises(ValueError, match=r"max_tokens=5 is too small: pair 1 alone needs 9"):
        token_batches([2, 8, 1], [3, 3, 3], max_tokens=5)
    with pytest.raises(ValueError, match="max_tokens=0"):
        token_batches([1], [1], max_tokens=0)
