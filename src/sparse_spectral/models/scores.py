"""Classification and ranking scores in plain numpy, equal to scikit-learn's.

The graph task scores validation every epoch for thousands of epochs; scikit-learn's input
validation costs about 10 ms a call there, more than the arithmetic. These functions compute
the same values (tests compare them with scikit-learn, ties included) for the inputs the task
has: 1-D arrays, labels 0/1 for the binary scores, integer classes otherwise.
"""

from __future__ import annotations

import numpy as np


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Share of ``preds`` (n,) equal to ``labels`` (n,)."""
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def f1_binary(labels: np.ndarray, preds: np.ndarray) -> float:
    """F1 of class 1, for labels and predictions in {0, 1}; 0 when it has no support."""
    labels, preds = np.asarray(labels) == 1, np.asarray(preds) == 1
    true_pos = np.sum(labels & preds)
    denominator = labels.sum() + preds.sum()
    return float(2 * true_pos / denominator) if denominator else 0.0


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney statistic, ties counted half.

    ``truth`` (n,) in {0, 1} with both classes present, ``scores`` (n,) higher = positive.
    """
    truth, scores = _binary(truth, scores)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # average rank (1-based) of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    positives = truth.sum()
    negatives = len(truth) - positives
    return float((ranks[truth == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, high to low."""
    truth, scores = _binary(truth, scores)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_truth = scores[order], truth[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_pos = np.cumsum(sorted_truth)[last_of_run]
    precision = true_pos / (last_of_run + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _binary(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth, scores = np.asarray(truth).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if truth.shape != scores.shape:
        raise ValueError(f"truth has {truth.size} entries and scores {scores.size}; "
                         "they must match")
    if not np.all((truth == 0) | (truth == 1)) or truth.min() == truth.max():
        raise ValueError("truth must hold labels 0 and 1, both present")
    return truth.astype(np.int64), scores
