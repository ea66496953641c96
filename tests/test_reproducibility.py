"""``--seed`` seeds every random source: two identical runs train identical weights (CPU).

Dropout draws from torch's global generator; ``train_run`` seeds it from the run's seed
(:func:`sparse_spectral._util.seeding.seed_global_rngs`), so whatever the process drew before
(another run, a user's own ``torch.rand``) does not leak into the masks. Data order and the
methods' draws are counter-seeded by the same seed already.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from engine_helpers import shakespeare_excerpt

from sparse_spectral._util.seeding import seed_global_rngs
from sparse_spectral.tasks.graph import GRAPH, GraphSettings
from sparse_spectral.tasks.lm import LM, LMSettings
from sparse_spectral.tasks.mt import MT, MTSettings
from sparse_spectral.training.runner import train_run


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))


def _weights(task, settings, **kw) -> dict[str, torch.Tensor]:
    model = train_run(task, settings, progress=False, **kw).model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _twice(task, build, tmp_path, **kw):
    """Train the same settings twice in one process, disturbing every global generator in
    between as an earlier run or user code would; return both final weights."""
    first = _weights(task, build(tmp_path / "a"), **kw)
    torch.rand(123), np.random.rand(5), random.random()
    second = _weights(task, build(tmp_path / "b"), **kw)
    return first, second


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_global_generators_follow_the_seed_and_the_rank():
    def draws(seed, rank=0):
        seed_global_rngs(seed, rank)
        return torch.rand(4), np.random.rand(2), random.random()

    first = draws(5)
    torch.rand(10)
    again = draws(5)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]
    assert not torch.equal(first[0], draws(6)[0])       # another seed, other masks
    assert not torch.equal(first[0], draws(5, rank=1)[0])  # a stream per rank, when asked


def test_lm_runs_with_dropout_train_identical_weights(tmp_path_factory, tmp_path):
    corpus = shakespeare_excerpt(tmp_path_factory, 20000)

    def settings(folder, dropout=0.1):
        return LMSettings.from_dict(dict(
            text=str(corpus), model="gpt_micro", dropout=dropout, method="sst", rank=4,
            block_size=16, batch_size=4, num_training_steps=3, warmup_steps=1,
            eval_every=3, eval_tokens=256, iteration_interval=2, output_dir=str(folder)))

    first, second = _twice(LM, settings, tmp_path)
    assert _same(first, second)
    # Dropout is on: without it the same seed trains other weights.
    assert not _same(first, _weights(LM, settings(tmp_path / "c", dropout=0.0)))


def test_mt_runs_with_dropout_train_identical_weights(reference_data, tmp_path):
    def settings(folder):  # the Euclidean model's dropout is 0.1 by default
        return MTSettings.from_dict(dict(
            data_dir=str(reference_data), vocab_size=300, train_pairs=200, eval_pairs=4,
            d_model=16, num_heads=2, num_layers=1, max_tokens=512, num_training_steps=3,
            warmup_steps=1, eval_every=3, rank=2, beam_size=1, num_examples=1,
            iteration_interval=2, output_dir=str(folder)))

    assert settings(tmp_path).model_dropout == 0.1
    assert _same(*_twice(MT, settings, tmp_path))


def test_graph_runs_with_dropout_train_identical_weights(reference_data, tmp_path):
    from sparse_spectral.tasks.graph import load_data

    def settings(folder):
        return GraphSettings.from_dict(dict(
            dataset="disease", task="lp", data_dir=str(reference_data), epochs=4, min_epochs=0,
            patience=100, lr=0.05, rank=2, dropout=0.3, save_embeddings=False,
            iteration_interval=2, output_dir=str(folder)))

    data = load_data(settings(tmp_path))
    assert _same(*_twice(GRAPH, settings, tmp_path, data=data))
