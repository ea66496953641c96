"""HyboNet's graph model (Chen et al. 2022, ``gcn/``): encoder, NC and LP decoders, losses.

    model = HyboNetGraphModel("nc", in_features=F, num_classes=C, num_layers=3, dropout=0.9)
    h = model(data.features, data.adj_norm)          # (N, dim) points on the hyperboloid
    loss = model.loss(h, data, "train")              # hinge (NC) or margin loss (LP)
    metrics = model.metrics(h, data, "val")          # acc, f1 (NC) or roc, ap (LP)

Exactly as the official code (reference/hybonet.md sections 2.2-2.7):

* features get a zero time column and go through :func:`~..hyperbolic.lorentz.expmap0`;
* the encoder stacks :class:`~..hyperbolic.layers.LorentzGraphConvolution` layers (Lorentz
  linear, then centroid aggregation over the row-normalised ``D^-1 (A + I)``): ``L - 1``
  layers for NC, ``L`` for LP, ambient sizes ``[F+1] + [dim] * ...``; ``act`` is applied to
  the input point of layers >= 1 only;
* NC: logits ``-d^2_L(h_i, p_c) + b_c`` to class prototypes ``p_c`` (a
  :class:`geoopt.ManifoldParameter`, HyboNet's ``random_normal``), multi-class hinge over all
  C entries with margin ``m``;
* LP: score ``-d^2_L(h_u, h_v)``, margin loss over (positive, negative) pairs; training
  negatives are drawn uniformly with replacement from ``train_edges_false``, as many as
  ``train_edges`` (HGCN's ``np.random.randint``); val/test use every listed negative.

Every ordinary linear map is a LorentzLinear's inner ``nn.Linear``, named
``encoder.layers.{i}.transform.linear``; :data:`HYBONET_TARGETS` selects exactly those.
"""

from __future__ import annotations

import math
from typing import Any

import geoopt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..hyperbolic.layers import LorentzGraphConvolution
from ..hyperbolic.lorentz import Lorentz, expmap0, pairwise_sqdist, random_normal, sqdist
from ..sparse_rows import SparseRows
from .scores import accuracy, average_precision, f1_binary, roc_auc

# Target spec for training methods: every LorentzLinear's inner nn.Linear (name suffix).
# "all-linear" selects the same layers (the model has no output head), so either works.
HYBONET_TARGETS = ["linear"]
TASKS = ("nc", "lp")
ACTIVATIONS = {None: None, "none": None, "relu": F.relu}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class HyboNetEncoder(nn.Module):
    """Feature lift by expmap0, then a stack of Lorentz graph convolutions.

    Args:
        in_features: raw feature size F (the lift adds the time coordinate).
        dim: ambient embedding size d (time included), HyboNet's ``--dim``.
        num_conv: number of graph layers.
        dropout: input dropout of every LorentzLinear.
        act: None or "relu", applied to the input point of layers >= 1.
        bias: LorentzLinear biases.
        k: curvature parameter.
        sparse_products: run the first layer on sparse lifted features and the aggregation
            on a CSR adjacency (:mod:`~sparse_spectral.sparse_rows`); ``False`` keeps the
            dense/COO products (same results up to float rounding, several times slower on
            Cora and CiteSeer).
    """

    def __init__(self, in_features: int, dim: int, num_conv: int, dropout: float = 0.0,
                 act: str | None = None, bias: bool = True, k: float = 1.0,
                 sparse_products: bool = True):
        super().__init__()
        self.sparse_products = bool(sparse_products)
        _check(act in ACTIVATIONS, f"act={act!r} is unknown; allowed: None, 'none', 'relu'")
        dims = [in_features + 1] + [dim] * num_conv
        self.k = float(k)
        self._lifted: tuple | None = None  # (features, its _version, lifted points)
        self._sparse: tuple | None = None  # (lifted points, their _version, SparseRows)
        self._adjacency: tuple | None = None  # (adj, its _version, SparseRows)
        self.layers = nn.ModuleList(
            LorentzGraphConvolution(dims[i], dims[i + 1], bias=bias, dropout=dropout,
                                    nonlin=ACTIVATIONS[act] if i > 0 else None, k=k)
            for i in range(num_conv))

    def lift(self, features: torch.Tensor) -> torch.Tensor:
        """``expmap0((0, features))``: (N, F) -> (N, F + 1) points on the hyperboloid.

        The lift of a fixed feature matrix never changes, and on Cora/CiteSeer (F = 1433 /
        3703) it is about a third of a training step, so it is kept for the tensor it was
        computed from (same object, same in-place version, no gradient).
        """
        def build(f: torch.Tensor) -> torch.Tensor:
            return expmap0(torch.cat([f.new_zeros(f.shape[0], 1), f], dim=1), self.k)

        return self._kept("_lifted", features, build)

    def _kept(self, slot: str, source: torch.Tensor, build):
        """``build(source)``, kept in attribute ``slot`` as ``(source, its _version, value)``
        and reused for the same unchanged tensor; never kept for a tensor needing a
        gradient (the graph's features and adjacency are fixed data)."""
        cached = getattr(self, slot)
        if cached is not None and cached[0] is source and cached[1] == source._version:
            return cached[2]
        value = build(source)
        if not source.requires_grad:
            setattr(self, slot, (source, source._version, value))
        return value

    def first_input(self, features: torch.Tensor) -> torch.Tensor | SparseRows:
        """The lifted features as the first layer gets them: :class:`SparseRows` when they
        are fixed and sparse (Cora, CiteSeer, Disease NC's identity), else dense.

        The sparse form gives the same outputs and gradients up to float rounding, with
        products that cost ``nnz`` instead of ``N (F + 1)`` per column.
        """
        x = self.lift(features)
        if not self.sparse_products:
            return x
        return self._kept("_sparse", x, lambda x: SparseRows(x) if SparseRows.worth_it(x) else x)

    def csr_adjacency(self, adj: torch.Tensor) -> torch.Tensor | SparseRows:
        """A sparse COO ``adj`` as :class:`SparseRows` (kept for the same unchanged tensor):
        the aggregation ``A h`` and its backward ``A^T g`` run in CSR, several times faster
        than COO (Airport: 3.0 ms -> 0.2 ms a layer). Dense ``adj`` is used as it is."""
        if (not self.sparse_products or adj.layout != torch.sparse_coo or adj.dim() != 2
                or adj.requires_grad):
            return adj
        return self._kept("_adjacency", adj, lambda a: SparseRows(a.coalesce()))

    def forward(self, features: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``features`` (N, F), ``adj`` (N, N) sparse or dense -> (N, dim) points."""
        x = self.first_input(features)
        adj = self.csr_adjacency(adj)
        for layer in self.layers:
            x = layer(x, adj)
        return x


class NCDecoder(nn.Module):
    """Class scores ``2k + 2 <h_i, p_c>_L + b_c = -d^2_L(h_i, p_c) + b_c``.

    Args:
        dim: ambient embedding size.
        num_classes: C.
        manifold: the Lorentz manifold of the prototypes.
        bias: learn a per-class bias (HyboNet's ``--bias 1``).

    Parameters: ``cls`` (C, dim) ManifoldParameter, ``bias`` (C,).
    """

    def __init__(self, dim: int, num_classes: int, manifold: Lorentz, bias: bool = True):
        super().__init__()
        points = random_normal(num_classes, dim, k=manifold.k.item())
        self.cls = geoopt.ManifoldParameter(points, manifold=manifold)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` (N, dim) points -> (N, C) logits."""
        logits = -pairwise_sqdist(h, self.cls, self.cls.manifold.k)
        return logits if self.bias is None else logits + self.bias


class LPDecoder(nn.Module):
    """Edge scores ``-d^2_L(h_u, h_v)`` (HyboNet constructs but never calls Fermi-Dirac).

    Args:
        k: curvature parameter.
    """

    def __init__(self, k: float = 1.0):
        super().__init__()
        self.k = float(k)

    def forward(self, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """``h`` (N, dim), ``edges`` (E, 2) int64 -> (E,) scores (<= 0)."""
        return -sqdist(h[edges[:, 0]], h[edges[:, 1]], self.k)


def hinge_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float,
               part: tuple[int, int] | None = None) -> torch.Tensor:
    """HyboNet's NC loss: ``mean_{i, c} relu(m - z_{i, y_i} + z_{i, c})`` over all C entries.

    The true class contributes the constant ``relu(m)`` (no gradient), as in the original.

    Args:
        logits: (N, C).
        labels: (N,) int64.
        margin: m.
        part: ``(index, count)``: only the nodes of part ``index`` of ``count``
            (:func:`_part_mean`); the mean of the parts' values is the whole loss.
    """
    correct = logits.gather(1, labels.unsqueeze(-1))
    return _part_mean(F.relu(margin - correct + logits), part)


def margin_loss(pos: torch.Tensor, neg: torch.Tensor, margin: float,
                part: tuple[int, int] | None = None) -> torch.Tensor:
    """HyboNet's LP loss: ``mean over [pos, neg] of relu(m - pos + [pos, neg])``.

    Equals ``(m + mean_e relu(m - pos_e + neg_e)) / 2`` for ``m > 0``.

    Args:
        pos, neg: (E,) scores of positive and negative pairs (equal counts).
        margin: m.
        part: ``(index, count)``: only the pairs of part ``index`` of ``count``.
    """
    _check(pos.shape == neg.shape, f"pos {tuple(pos.shape)} and neg {tuple(neg.shape)} scores "
           "must have the same shape")
    preds = torch.stack([pos, neg], dim=-1)
    return _part_mean(F.relu(margin - preds[..., 0:1] + preds), part)


def _part_mean(terms: torch.Tensor, part: tuple[int, int] | None) -> torch.Tensor:
    """The mean of ``terms`` (R, K); with ``part = (index, count)``, ``count`` times the sum
    of part ``index``'s rows (``torch.tensor_split``'s contiguous cut) over all R K terms.

    That is a rank's share under DDP: the mean over ranks (DDP's gradient average) of the
    parts' values is the mean over all terms, whatever the parts' sizes.
    """
    if part is None:
        return terms.mean()
    index, count = part
    return terms.tensor_split(count, dim=0)[index].sum() * (count / terms.numel())


def sample_negatives(edges_false: torch.Tensor, count: int, rng=None) -> torch.Tensor:
    """HGCN's training negatives: ``count`` rows of ``edges_false``, uniform, with replacement.

    Args:
        edges_false: (P, 2) the negative pool.
        count: rows to draw (HGCN: the number of training positives).
        rng: ``np.random.Generator`` or ``np.random.RandomState``; None uses numpy's global
            RNG, as HGCN does (``np.random.randint(0, P, count)``).

    Returns:
        (count, 2) int64.
    """
    pool = len(edges_false)
    _check(pool > 0, "edges_false is empty: no negatives to sample from")
    if rng is None:
        index = np.random.randint(0, pool, count)
    elif isinstance(rng, np.random.Generator):
        index = rng.integers(0, pool, count)
    else:
        index = rng.randint(0, pool, count)
    return torch.as_tensor(edges_false)[torch.as_tensor(index, dtype=torch.long)]


def _split(data: Any, name: str) -> torch.Tensor:
    value = getattr(data, name, None)
    _check(value is not None, f"data has no {name!r}")
    return torch.as_tensor(value)


class HyboNetGraphModel(nn.Module):
    """HyboNet for node classification (``task="nc"``) or link prediction (``"lp"``).

    Args:
        task: "nc" or "lp".
        in_features: raw feature size F.
        num_classes: C (NC only).
        dim: ambient embedding size (HyboNet: 16).
        num_layers: HyboNet's ``--num-layers`` L: NC builds L - 1 graph layers, LP builds L.
        dropout: LorentzLinear input dropout.
        act: None or "relu" (layers >= 1).
        bias: LorentzLinear biases and the NC class bias.
        margin: m of the hinge (NC) or margin (LP) loss (HyboNet's default 2).
        k: curvature parameter (HyboNet: 1).
        sparse_products: see :class:`HyboNetEncoder`.

    Submodules: ``encoder``, ``decoder``, ``manifold`` (holds the frozen ``k``).
    """

    def __init__(self, task: str, in_features: int, num_classes: int | None = None,
                 dim: int = 16, num_layers: int = 2, dropout: float = 0.0,
                 act: str | None = None, bias: bool = True, margin: float = 2.0,
                 k: float = 1.0, sparse_products: bool = True):
        super().__init__()
        _check(task in TASKS, f"task={task!r} is unknown; allowed: {', '.join(TASKS)}")
        _check(isinstance(num_layers, int) and num_layers >= 2,
               f"num_layers={num_layers!r} must be an int >= 2 (HyboNet asserts > 1)")
        _check(dim >= 2, f"dim={dim!r} must be >= 2 (time plus one space coordinate)")
        _check(margin >= 0, f"margin={margin!r} must be >= 0")
        if task == "nc":
            _check(isinstance(num_classes, int) and num_classes >= 2,
                   f"num_classes={num_classes!r} must be an int >= 2 for task 'nc'")
        self.task, self.margin = task, float(margin)
        self.manifold = Lorentz(k)
        num_conv = num_layers - 1 if task == "nc" else num_layers
        self.encoder = HyboNetEncoder(in_features, dim, num_conv, dropout=dropout, act=act,
                                      bias=bias, k=k, sparse_products=sparse_products)
        if task == "nc":
            self.decoder = NCDecoder(dim, num_classes, self.manifold, bias=bias)
        else:
            self.decoder = LPDecoder(k)

    def forward(self, features: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Node embeddings: ``features`` (N, F), ``adj`` (N, N) -> (N, dim) points."""
        return self.encoder(features, adj)

    encode = forward

    # ------------------------------------------------------------------ per split
    def _scores(self, h: torch.Tensor, data: Any, split: str, rng=None):
        """NC: (logits, labels) on the split; LP: (positive, negative) scores."""
        _check(split in ("train", "val", "test"),
               f"split={split!r} is unknown; allowed: train, val, test")
        if self.task == "nc":
            idx = _split(data, f"idx_{split}").long()
            return self.decoder(h[idx]), _split(data, "labels")[idx].long()
        pos_edges = _split(data, f"{split}_edges").long()
        neg_edges = _split(data, f"{split}_edges_false").long()
        if split == "train":
            neg_edges = sample_negatives(neg_edges, len(pos_edges), rng)
        return self.decoder(h, pos_edges), self.decoder(h, neg_edges)

    def loss(self, h: torch.Tensor, data: Any, split: str = "train", rng=None,
             part: tuple[int, int] | None = None) -> torch.Tensor:
        """The task's loss on ``split`` (LP ``train`` samples negatives with ``rng``).

        ``part = (index, count)``: a DDP rank's share, the loss terms of part ``index`` of
        ``count`` of the split's nodes (NC) or pairs (LP), weighted so that the mean over
        the parts is the whole loss (:func:`_part_mean`).
        """
        first, second = self._scores(h, data, split, rng)
        if self.task == "nc":
            return hinge_loss(first, second, self.margin, part)
        return margin_loss(first, second, self.margin, part)

    @torch.no_grad()
    def metrics(self, h: torch.Tensor, data: Any, split: str, rng=None) -> dict[str, float]:
        """NC: loss, acc, f1 (micro for C > 2, binary for C = 2); LP: loss, roc, ap."""
        first, second = self._scores(h, data, split, rng)
        if self.task == "nc":
            preds = first.argmax(dim=1).cpu().numpy()
            labels = second.cpu().numpy()
            acc = accuracy(labels, preds)
            # micro F1 of single-label multi-class predictions is the accuracy
            return {"loss": float(hinge_loss(first, second, self.margin)), "acc": acc,
                    "f1": acc if first.shape[1] > 2 else f1_binary(labels, preds)}
        scores = torch.cat([first, second]).cpu().numpy()
        truth = np.concatenate([np.ones(len(first)), np.zeros(len(second))])
        return {"loss": float(margin_loss(first, second, self.margin)),
                "roc": roc_auc(truth, scores), "ap": average_precision(truth, scores)}


def train_graph_step(model: HyboNetGraphModel, data: Any, optimizers, method, step: int,
                     grad_clip: float | None = None, rng=None,
                     stats: dict[str, float] | None = None) -> float:
    """One full-batch HyboNet training step; returns the training loss before the update.

    Order as ``gcn/train.py``: train mode, encode every node, loss on the train split,
    backward, clip the global gradient norm (all parameters, manifold ones included), step
    both optimizers, then ``method.after_step(step, optimizers)``.

    Args:
        model: the (prepared) model.
        data: a graph with ``features``, ``adj_norm`` and the split fields.
        optimizers: the :class:`~..hyperbolic.optim.CombinedOptimizer` (or any optimizer).
        method: the training method.
        step: 1-based index of this optimizer step.
        grad_clip: max global gradient norm, or None.
        rng: negative-sampling RNG (LP).
        stats: if given, receives ``"grad_norm"``, the global gradient norm before clipping
            (the ablation's gradient-norm trace).
    """
    model.train()
    optimizers.zero_grad()
    loss = model.loss(model(data.features, data.adj_norm), data, "train", rng)
    loss.backward()
    # max_norm = inf only measures the norm.
    norm = nn.utils.clip_grad_norm_(model.parameters(),
                                    grad_clip if grad_clip is not None else math.inf)
    if stats is not None:
        stats["grad_norm"] = float(norm)
    optimizers.step()
    method.after_step(step, optimizers)
    return loss.item()
