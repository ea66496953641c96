"""The numpy scores equal scikit-learn's, ties included, and refuse bad input."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    roc_auc_score,
)

from sparse_spectral.models.scores import accuracy, average_precision, f1_binary, roc_auc


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("distinct", [3, 20, None])  # few distinct scores = many ties
def test_ranking_scores_equal_sklearn(seed, distinct):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    truth = rng.integers(0, 2, n)
    truth[:2] = [0, 1]
    scores = rng.normal(size=n) + truth * rng.uniform(0, 2)
    if distinct is not None:
        scores = np.round(scores * distinct / 4) / distinct
    assert roc_auc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert average_precision(truth, scores) == pytest.approx(
        average_precision_score(truth, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_classification_scores_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    assert f1_binary(labels, preds) == pytest.approx(f1_score(labels, preds), abs=1e-12)
    many_labels, many_preds = rng.integers(0, 7, 80), rng.integers(0, 7, 80)
    assert accuracy(many_labels, many_preds) == pytest.approx(
        accuracy_score(many_labels, many_preds))
    assert accuracy(many_labels, many_preds) == pytest.approx(
        f1_score(many_labels, many_preds, average="micro"))
    assert f1_binary(np.zeros(4), np.zeros(4)) == 0.0  # no positives anywhere


def test_perfect_and_reversed_rankings():
    truth = np.array([0, 0, 1, 1])
    assert roc_auc(truth, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(truth, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc(truth, [1, 1, 1, 1]) == 0.5
    assert average_precision(truth, [0.1, 0.2, 0.3, 0.4]) == 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="both present"):
        roc_auc(np.ones(3), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels 0 and 1"):
        average_precision(np.array([0, 2, 1]), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="must match"):
        roc_auc(np.array([0, 1]), [0.1, 0.2, 0.3])
