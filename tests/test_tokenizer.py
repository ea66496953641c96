"""Tests for sparse_spectral.data.tokenizer: char and byte-level BPE, files and the cache.

Real text comes from the reference TinyShakespeare copy (``../shared/data`` or
``$SST_DATA_DIR``); no test uses the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_spectral.data import (
    MIN_BPE_VOCAB,
    BPETokenizer,
    CharTokenizer,
    Corpus,
    Tokenizer,
    get_tokenizer,
    load_tokenizer_file,
    tokenizer_key,
)
from sparse_spectral.data import tokenizer as tokenizer_module

ODD_TEXT = "naïve café — ‘quoted’ 😀\tTabs,  double  spaces\n\n\n  indented\r\nend  \n \nX"


def _shared_text() -> str | None:
    project = Path(__file__).resolve().parents[1]
    for root in (os.environ.get("SST_DATA_DIR"), project / ".." / "shared" / "data"):
        if root and (Path(root) / "tinyshakespeare" / "input.txt").is_file():
            return (Path(root) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return None


@pytest.fixture(scope="module")
def real_text() -> str:
    text = _shared_text()
    if text is None:
        pytest.skip("reference data not found: set SST_DATA_DIR or provide ../shared/data")
    return text


@pytest.fixture(scope="module")
def real_corpus(real_text) -> Corpus:
    """A 200k-character slice of TinyShakespeare: fast to train on, still real text."""
    return Corpus("tinyshakespeare", real_text[:180_000], real_text[180_000:190_000],
                  real_text[190_000:200_000])


@pytest.fixture(scope="module")
def bpe(real_corpus) -> BPETokenizer:
    return BPETokenizer.train(real_corpus.train, 512)


# ---------------------------------------------------------------------- char
def test_char_round_trip_and_ids_in_code_point_order():
    tok = CharTokenizer.train("hello world")
    assert tok.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert tok.vocab_size == 9 and tok.unk_id == 8 and tok.kind == "char"
    ids = tok.encode("hello world")
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert ids[:5] == [3, 2, 4, 4, 5]
    assert tok.decode(ids) == "hello world"
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == "hello world"
    assert isinstance(tok, Tokenizer)


def test_char_unseen_characters_map_to_unk():
    tok = CharTokenizer.train("abc")
    assert tok.encode("a😀z") == [0, tok.unk_id, tok.unk_id]
    assert tok.decode([0, tok.unk_id]) == "a\ufffd"  # one character per id
    with pytest.raises(ValueError, match=r"out of range \[0, 4\)"):
        tok.decode([4])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train("")


def test_char_vocabulary_comes_from_train_split_only(tmp_path):
    corpus = Corpus("text", "aab\n", "abc\n", "b\n")
    tok = get_tokenizer("char", corpus, cache=tmp_path)
    assert tok.vocab_size == 4  # "\n", "a", "b" and <unk>
    assert tok.encode(corpus.validation)[2] == tok.unk_id


def test_char_on_real_text(real_text):
    tok = CharTokenizer.train(real_text)
    assert tok.vocab_size == 65 + 1  # the 65 characters of TinyShakespeare, plus <unk>
    assert tok.decode(tok.encode_array(real_text)) == real_text


# ---------------------------------------------------------------------- bpe
def test_bpe_round_trip_on_real_text(bpe, real_corpus):
    assert bpe.kind == "bpe" and bpe.vocab_size == 512
    for text in (real_corpus.validation, real_corpus.test, ODD_TEXT):
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert 0 <= min(ids) and max(ids) < bpe.vocab_size
    assert len(bpe.encode(real_corpus.validation)) < 0.6 * len(real_corpus.validation)


def test_bpe_vocab_size_is_respected(real_corpus):
    for size in (MIN_BPE_VOCAB, 300):
        tok = BPETokenizer.train(real_corpus.train[:20_000], size)
        assert tok.vocab_size == size
    tiny = BPETokenizer.train("ab ab ab", 1000)  # runs out of pairs: fewer than asked
    assert 256 < tiny.vocab_size < 1000 and tiny.decode(tiny.encode("abba")) == "abba"


@pytest.mark.parametrize("size", [256, 0, -5, 300.0, True, "512"])
def test_bpe_rejects_bad_vocab_sizes(size):
    with pytest.raises(ValueError, match=">= 257"):
        BPETokenizer.train("some text", size)


def test_bpe_chunked_encoding_equals_whole_text(real_corpus, monkeypatch):
    # Odd whitespace (indents, trailing spaces, runs of blank lines) in training, so that
    # the vocabulary has whitespace merges that a wrong chunk boundary would change.
    odd = real_corpus.train[:40_000].replace("\n", "  \n\n\n  ").replace(" I ", " \tI ")
    tok = BPETokenizer.train(odd, 400)
    text = odd[:3000] + ODD_TEXT + real_corpus.validation[:3000]
    whole = tok.tokenizer.encode(text).ids
    for size in (1, 2, 3, 5, 8, 13):  # cut at (nearly) every allowed point
        monkeypatch.setattr(tokenizer_module, "_CHUNK_CHARS", size)
        assert len(list(tokenizer_module._chunks(text, size))) > 30
        assert tok.encode(text) == whole, f"chunks of {size} characters changed the ids"


def test_bpe_training_is_deterministic_across_processes(bpe, real_corpus, tmp_path):
    again = BPETokenizer.train(real_corpus.train, 512)
    assert again.fingerprint == bpe.fingerprint
    # A fresh process has fresh hash-map seeds in the Rust library.
    source = tmp_path / "train.txt"
    source.write_text(real_corpus.train, encoding="utf-8")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from sparse_spectral.data.tokenizer import BPETokenizer
        text = Path({str(source)!r}).read_text(encoding="utf-8")
        print(BPETokenizer.train(text, 512).fingerprint)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == bpe.fingerprint


# ---------------------------------------------------------------------- files
def test_save_and_load_both_kinds(tmp_path, bpe):
    char = CharTokenizer.train("hello")
    for tok in (char, bpe):
        path = tmp_path / f"{tok.kind}.json"
        tok.save(path)
        loaded = load_tokenizer_file(path)
        assert type(loaded) is type(tok) and loaded.fingerprint == tok.fingerprint
        assert loaded.decode(loaded.encode("hello")) == "hello"
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]  # atomic writes
    from tokenizers import Tokenizer as HFTokenizer

    assert HFTokenizer.from_file(str(tmp_path / "bpe.json")).get_vocab_size() == 512


def test_load_tokenizer_file_rejects_other_files(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="junk.json"):
        load_tokenizer_file(junk)
    junk.write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_tokenizer_file(junk)


# ---------------------------------------------------------------------- cache
def _count_training(monkeypatch, cls):
    calls = []
    original = cls.train.__func__

    def spy(klass, *args, **kwargs):
        calls.append(args)
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "train", classmethod(spy))
    return calls


def test_get_tokenizer_cache_hit_does_not_retrain(tmp_path, real_corpus, monkeypatch):
    calls = _count_training(monkeypatch, BPETokenizer)
    first = get_tokenizer("bpe", real_corpus, vocab_size=300, cache=tmp_path)
    second = get_tokenizer("bpe", real_corpus, vocab_size=300, cache=tmp_path)
    assert len(calls) == 1 and calls[0][0] is real_corpus.train  # trained on TRAIN only
    assert second.fingerprint == first.fingerprint
    key = tokenizer_key("bpe", real_corpus, 300)
    assert (tmp_path / f"{key}.json").is_file()
    assert real_corpus.digest[:16] in key and "bpe300" in key and "-v1-" in key

    char_calls = _count_training(monkeypatch, CharTokenizer)
    get_tokenizer("char", real_corpus, cache=tmp_path)
    get_tokenizer("char", real_corpus, cache=tmp_path)
    assert len(char_calls) == 1


def test_cache_key_changes_with_vocab_size_kind_and_corpus(tmp_path, real_corpus, monkeypatch):
    calls = _count_training(monkeypatch, BPETokenizer)
    a = get_tokenizer("bpe", real_corpus, vocab_size=300, cache=tmp_path)
    b = get_tokenizer("bpe", real_corpus, vocab_size=320, cache=tmp_path)
    assert len(calls) == 2 and (a.vocab_size, b.vocab_size) == (300, 320)
    other = Corpus(real_corpus.name, real_corpus.train[:-1], real_corpus.validation,
                   real_corpus.test)
    keys = {tokenizer_key("bpe", real_corpus, 300), tokenizer_key("bpe", real_corpus, 320),
            tokenizer_key("char", real_corpus), tokenizer_key("bpe", other, 300)}
    assert len(keys) == 4
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_get_tokenizer_default_cache_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path))
    corpus = Corpus("text", "to be or not to be\n" * 50, "to be\n", "or not\n")
    tok = get_tokenizer("bpe", corpus)
    assert (tmp_path / "tokenizers" / f"{tokenizer_key('bpe', corpus, 2048)}.json").is_file()
    assert tok.vocab_size <= 2048


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    corpus = Corpus("text", "abc\n", "ab\n", "c\n")
    path = tmp_path / f"{tokenizer_key('char', corpus)}.json"
    path.write_text("{broken")
    with pytest.warns(UserWarning, match="retraining"):
        tok = get_tokenizer("char", corpus, cache=tmp_path)
    assert tok.vocab_size == 5 and load_tokenizer_file(path).vocab_size == 5


def test_get_tokenizer_rejects_bad_arguments(tmp_path):
    corpus = Corpus("text", "abc\n", "ab\n", "c\n")
    with pytest.raises(ValueError, match=r"unknown tokenizer kind 'wordpiece'.*'char', 'bpe'"):
        get_tokenizer("wordpiece", corpus, cache=tmp_path)
    with pytest.raises(ValueError, match="only to 'bpe'"):
        get_tokenizer("char", corpus, vocab_size=100, cache=tmp_path)
    with pytest.raises(ValueError, match=">= 257"):
        get_tokenizer("bpe", corpus, vocab_size=100, cache=tmp_path)
