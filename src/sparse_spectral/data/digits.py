"""scikit-learn's 8x8 digits (1,797 images, 10 classes): the images task's small data set.

``sst demo`` and ``sst compare images --dataset digits`` train on it; it ships with
scikit-learn, so it needs no download.
"""

from __future__ import annotations

import torch


def load_digits_split(seed: int = 0, test_share: float = 0.2):
    """Standardised features ``(N, 64)`` and labels ``(N,)``, split train/test by ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the digits demo needs scikit-learn: pip install "
                          "'sparse-spectral[demo]'") from err
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_share)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    return (x[train], y[train]), (x[test], y[test])
