"""HGCN's own graph files (Airport, Disease) and HGCN's splitting procedures.

Readers (HGCN's ``utils/data_utils.py`` conventions, which HyboNet keeps):

* :func:`read_airport`: the networkx pickle ``airport.p``, read with the restricted unpickler
  into plain dicts. Node order = the graph's node order (what ``nx.adjacency_matrix`` uses);
  each node's ``feat`` holds 5 floats. Edges carry no weight, so the adjacency is 0/1.
* :func:`read_disease`: ``<name>.edges.csv`` (one ``a,b`` per line; node ids numbered in
  order of first appearance, which is the identity on the reference files), the optional
  ``<name>.feats.npz`` (a scipy CSR matrix saved with ``save_npz``, read with numpy only)
  and ``<name>.labels.npy``.

Splits, each drawing from a ``numpy.random.RandomState(seed)`` (the same stream as HGCN's
``np.random.seed(seed)`` followed by global ``np.random.shuffle`` calls, without touching
numpy's global state):

* :func:`split_nodes_hgcn`: HGCN's ``split_data``, kept bit for bit, including its
  binary-label assumption (a quirk on 4-class Airport: duplicated and overlapping indices).
* :func:`split_nodes_stratified`: the corrected split, stratified by class.
* :func:`mask_edges`: HGCN's ``mask_edges`` (``corrected=False``) or the corrected variant.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .restricted_pickle import AIRPORT_GLOBALS, PickledObject, load_restricted

AIRPORT_LABEL_COLUMN = 4
AIRPORT_BINS = (7.0 / 7, 8.0 / 7, 9.0 / 7)


# ---------------------------------------------------------------------------------------------
# Readers


def _state(obj: object, what: str, path: Path) -> dict:
    if not isinstance(obj, PickledObject) or not isinstance(obj.state, dict):
        raise ValueError(f"{path}: expected a pickled {what}, got {type(obj).__name__}")
    return obj.state


def read_airport(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``airport.p``.

    Returns:
        ``(feat, adjacency)``: (N, 5) float64 node features in the graph's node order, and
        the (N, N) bool adjacency (symmetric; one self-loop in the reference file).
    """
    state = _state(load_restricted(path, AIRPORT_GLOBALS), "networkx Graph", path)
    nodes = state.get("_node", state.get("node"))  # networkx >= 2 names it _node
    adj = state.get("_adj", state.get("adj"))
    if not isinstance(nodes, dict) or not isinstance(adj, dict):
        raise ValueError(f"{path}: the pickled graph has no node/adjacency dicts")
    index = {node: i for i, node in enumerate(nodes)}
    feat = np.array([nodes[node]["feat"] for node in nodes], dtype=np.float64)
    adjacency = np.zeros((len(index), len(index)), dtype=bool)
    for node, neighbours in adj.items():
        adjacency[index[node], [index[v] for v in neighbours]] = True
    if not (adjacency == adjacency.T).all():
        raise ValueError(f"{path}: the adjacency is not symmetric")
    return feat, adjacency


def airport_labels(feat: np.ndarray) -> np.ndarray:
    """HGCN's Airport classes: column 4 binned at (1, 8/7, 9/7), shifted to start at 0."""
    digitized = np.digitize(feat[:, AIRPORT_LABEL_COLUMN], bins=AIRPORT_BINS)
    return (digitized - digitized.min()).astype(np.int64)


def read_edges_csv(path: Path) -> tuple[np.ndarray, int]:
    """``a,b`` lines -> ((E, 2) int64 edges in file order, number of nodes).

    Node names are numbered in order of first appearance (HGCN's ``load_synthetic_data``).
    """
    index: dict[str, int] = {}
    edges = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(",")
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected 'a,b', got {line!r}")
        edges.append([index.setdefault(name, len(index)) for name in parts])
    return np.array(edges, dtype=np.int64).reshape(-1, 2), len(index)


def read_npz_csr(path: Path) -> np.ndarray:
    """A dense float64 array from a scipy ``save_npz`` CSR file (read without pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = z["format"].item()
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != "csr":
                raise ValueError(f"{path}: expected a CSR matrix, got format {fmt!r}")
            shape = tuple(int(s) for s in z["shape"])
            data, indices, indptr = z["data"], z["indices"], z["indptr"]
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"{path}: not a scipy sparse .npz file ({error})") from error
    out = np.zeros(shape, dtype=np.float64)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    np.add.at(out, (rows, indices), data)
    return out


@dataclass
class DiseaseRaw:
    """A Disease graph as arrays.

    Attributes:
        adjacency: (N, N) bool, symmetric (the csv is read as undirected).
        features: (N, F) float64 from ``feats.npz``, or ``None`` when not read.
        labels: (N,) int64, or ``None`` when not read.
    """

    adjacency: np.ndarray
    features: np.ndarray | None
    labels: np.ndarray | None


def read_disease(folder: Path, name: str, *, features: bool, labels: bool) -> DiseaseRaw:
    """Read ``<folder>/<name>.edges.csv`` and optionally the features and labels.

    Args:
        folder: e.g. ``<data_dir>/hgcn/disease_lp``.
        name: ``"disease_lp"`` or ``"disease_nc"``.
        features: read ``<name>.feats.npz`` (it must exist).
        labels: read ``<name>.labels.npy``.
    """
    edges, num_nodes = read_edges_csv(folder / f"{name}.edges.csv")
    adjacency = np.zeros((num_nodes, num_nodes), dtype=bool)
    adjacency[edges[:, 0], edges[:, 1]] = True
    adjacency[edges[:, 1], edges[:, 0]] = True
    feats = read_npz_csr(folder / f"{name}.feats.npz") if features else None
    labs = None
    if labels:
        labs = np.load(folder / f"{name}.labels.npy", allow_pickle=False)
        if labs.shape != (num_nodes,):
            raise ValueError(f"{folder / (name + '.labels.npy')}: shape {labs.shape}, "
                             f"expected ({num_nodes},)")
        labs = labs.astype(np.int64)
    if feats is not None and feats.shape[0] != num_nodes:
        raise ValueError(f"{folder / (name + '.feats.npz')}: {feats.shape[0]} rows for "
                         f"{num_nodes} nodes")
    return DiseaseRaw(adjacency, feats, labs)


# ---------------------------------------------------------------------------------------------
# Node splits


def split_nodes_hgcn(labels: np.ndarray, val_prop: float, test_prop: float,
                     rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HGCN's ``split_data``, bit for bit (returns ``(train, val, test)`` in HGCN's order).

    "Positives" are nodes with label != 0, "negatives" nodes with label != 1; each list is
    shuffled, ``m = min(sizes)``, and ``round(prop * m)`` of each go to val, the next
    ``round(test_prop * m)`` to test, the rest to train. Right for binary labels; with more
    classes (Airport) labels >= 2 are in both lists, so the splits hold duplicates and
    overlap. Kept as is: published Airport numbers use it.
    """
    pos = np.flatnonzero(labels != 0)
    neg = np.flatnonzero(labels != 1)
    rng.shuffle(pos)
    rng.shuffle(neg)
    m = min(len(pos), len(neg))
    n_val = round(val_prop * m)
    n_test = round(test_prop * m)
    val = np.concatenate([pos[:n_val], neg[:n_val]])
    test = np.concatenate([pos[n_val:n_val + n_test], neg[n_val:n_val + n_test]])
    train = np.concatenate([pos[n_val + n_test:], neg[n_val + n_test:]])
    return train.astype(np.int64), val.astype(np.int64), test.astype(np.int64)


def split_nodes_stratified(labels: np.ndarray, val_prop: float, test_prop: float,
                           rng: np.random.RandomState
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The corrected node split: per class, shuffle, ``round(prop * n_c)`` to val and test.

    Classes are visited in increasing order; each class's nodes are shuffled with ``rng``;
    the first ``round(val_prop * n_c)`` go to val, the next ``round(test_prop * n_c)`` to
    test, the rest to train. Every node lands in exactly one split; each split is sorted.
    """
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = round(val_prop * len(idx))
        n_test = round(test_prop * len(idx))
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


# ---------------------------------------------------------------------------------------------
# Edge split


@dataclass
class EdgeSplit:
    """Link-prediction edge sets, each (E, 2) int64 ``(i, j)`` with ``i <= j``.

    Attributes:
        train_adjacency: (N, N) int8 training graph as HGCN builds it,
            ``M + M.T`` with ``M`` the train positives (a train self-loop counts 2).
        train_edges, val_edges, test_edges: positive pairs.
        train_edges_false: the pool training negatives are sampled from.
        val_edges_false, test_edges_false: fixed negative pairs, as many as the positives.
    """

    train_adjacency: np.ndarray
    train_edges: np.ndarray
    train_edges_false: np.ndarray
    val_edges: np.ndarray
    val_edges_false: np.ndarray
    test_edges: np.ndarray
    test_edges_false: np.ndarray


def _shuffled_pairs(mask: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """Row-major nonzero ``(i, j)`` of ``mask``, shuffled as ``rng.shuffle`` shuffles rows.

    Shuffling the flat indices consumes the same draws and gives the same permutation as
    HGCN's shuffle of the (M, 2) pair array, at a fraction of the cost.
    """
    flat = np.flatnonzero(mask)
    rng.shuffle(flat)
    rows, cols = np.divmod(flat, mask.shape[1])
    return np.stack([rows, cols], axis=1)


def mask_edges(adjacency: np.ndarray, val_prop: float, test_prop: float,
               rng: np.random.RandomState, *, corrected: bool) -> EdgeSplit:
    """HGCN's ``mask_edges`` (``corrected=False``) or the corrected variant.

    HGCN: positives = nonzeros of ``triu(A)`` (diagonal included), negatives = nonzeros of
    ``triu(1 - A)`` (**diagonal pairs (i, i) included**), both shuffled; ``int(prop * m)``
    positives (and as many negatives) go to val and test; the training negative pool is
    **all** negatives (val/test negatives included) plus the val and test positives.

    Corrected: self-loops are dropped from ``A`` first and negatives are off-diagonal pairs
    only; the pool excludes the val/test negatives (it is every non-edge of the training
    graph that is not a held-out negative: all other negatives plus the held-out
    positives, which the training graph cannot tell from non-edges). The same draws are
    made, so the positive split differs from HGCN's only through the dropped self-loops.

    Args:
        adjacency: (N, N) bool symmetric adjacency.
        val_prop, test_prop: fractions of the positive pairs held out.
        rng: drawn from in HGCN's order (positives shuffled, then negatives).
        corrected: which variant.
    """
    adjacency = adjacency.astype(bool)
    if corrected:
        adjacency = adjacency & ~np.eye(len(adjacency), dtype=bool)
    pos = _shuffled_pairs(np.triu(adjacency), rng)
    neg = _shuffled_pairs(np.triu(~adjacency, k=1 if corrected else 0), rng)
    m = len(pos)
    n_val = int(m * val_prop)
    n_test = int(m * test_prop)
    val, test, train = pos[:n_val], pos[n_val:n_val + n_test], pos[n_val + n_test:]
    val_false, test_false = neg[:n_val], neg[n_val:n_val + n_test]
    pool = neg[n_val + n_test:] if corrected else neg
    train_false = np.concatenate([pool, val, test], axis=0)
    counts = np.zeros(adjacency.shape, dtype=np.int8)
    np.add.at(counts, (train[:, 0], train[:, 1]), 1)
    counts = counts + counts.T
    return EdgeSplit(counts, train, train_false, val, val_false, test, test_false)

