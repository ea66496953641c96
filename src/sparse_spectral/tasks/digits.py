"""A small real task: an MLP on scikit-learn's 8x8 digits (1,797 images, 10 classes).

It is the project's demo until the language-model task lands: it trains the same MLP with
several methods under the same data, seed and schedule and reports loss and accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..accounting import count_parameters
from ..methods import make_method


@dataclass
class DigitsResult:
    method: str
    trainable: int
    total: int
    train_loss: float
    test_accuracy: float
    seconds: float


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


def build_mlp(width: int = 256, depth: int = 2, seed: int = 0) -> nn.Sequential:
    """``64 -> width -> ... -> 10`` MLP with ReLU; the last layer is the (dense) head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    dims = [64] + [width] * depth
    for d_in, d_out in zip(dims, dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def train_digits(method_name: str, rank: int = 8, epochs: int = 30, lr: float = 3e-3,
                 batch_size: int = 64, width: int = 256, seed: int = 0,
                 iteration_interval: int = 20, log=print) -> DigitsResult:
    """Train the digits MLP with one method; return its final metrics.

    Every hidden layer is a target; the classification head stays dense (as the paper keeps
    output heads dense).
    """
    (x_train, y_train), (x_test, y_test) = load_digits_split(seed)
    model = build_mlp(width=width, seed=seed)
    head = str(len(model) - 1)
    settings = {"exclude_modules": [head]}
    if method_name == "sst":
        settings |= {"rank": rank, "iteration_interval": iteration_interval, "seed": seed}
    method = make_method(method_name, **settings)
    model = method.prepare(model)
    optimizer = method.build_optimizer(model, lr=lr)
    trainable, total = count_parameters(model)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    step, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(y_train), generator=gen)
        total_loss = 0.0
        for i in range(0, len(perm), batch_size):
            batch = perm[i:i + batch_size]
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            method.after_step(step, optimizer)
            total_loss += loss.item() * len(batch)
        train_loss = total_loss / len(perm)
        accuracy = evaluate(model, x_test, y_test)
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            log(f"[{method_name}] epoch {epoch:3d}  train loss {train_loss:.4f}  "
                f"test accuracy {accuracy:.4f}")
    return DigitsResult(method_name, trainable, total, train_loss, accuracy,
                        time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    return (model(x).argmax(-1) == y).float().mean().item()
