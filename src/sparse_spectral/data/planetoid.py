"""Planetoid citation graphs (Cora, CiteSeer) from the ``ind.<name>.<part>`` pickles.

The files are the ones of Kipf & Welling's ``gcn`` repository (and of PyTorch Geometric's
``Planetoid`` reader): ``x``/``y`` (labelled training nodes), ``tx``/``ty`` (test nodes),
``allx``/``ally`` (every node that is not a test node), ``graph`` (a dict of adjacency lists)
and ``test.index`` (the test nodes' ids, in ``tx`` order). They are read with the restricted
unpickler (:mod:`.restricted_pickle`); no scipy, networkx or torch_geometric is needed.

Assembly follows HGCN's ``load_citation_data`` (which HyboNet keeps):

* features = ``vstack(allx, tx)`` with the test rows moved to their ids, labels likewise from
  ``ally``/``ty`` then ``argmax``;
* the adjacency is the graph of ``graph`` in node-id order (``networkx.from_dict_of_lists``
  gives the same order on these files: keys are 0..N-1 in order), duplicates collapsed,
  self-loops kept (CiteSeer has 124; Cora none);
* the split is Planetoid's: train = the first ``len(y)`` nodes, val = the next
  ``min(1000, N - len(y) - len(test))`` (HyboNet's change; HGCN took 500), test = the sorted
  test ids.

CiteSeer needs one repair that HGCN lacks (its loader fails there with an IndexError): 15
node ids between the smallest and largest test id have no ``tx`` row (Kipf's ``gcn`` calls
them isolated; in the graph file they have one or two edges each). As in Kipf's ``gcn`` and
PyTorch Geometric, they get all-zero feature rows and an all-zero label row (so label 0 after
``argmax``); they are in no split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .restricted_pickle import PLANETOID_GLOBALS, PickledObject, load_restricted

PLANETOID_NAMES = ("cora", "citeseer")
PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")
VAL_SIZE = 1000  # HyboNet's validation size (HGCN: 500)


@dataclass
class PlanetoidRaw:
    """One Planetoid graph as arrays, before any HGCN preprocessing.

    Attributes:
        features: (N, F) float32 raw bag-of-words features.
        labels: (N,) int64 class ids.
        edges: (E, 2) int64 undirected edges ``i <= j`` in row-major order, self-loops
            included, duplicates removed.
        idx_train, idx_val, idx_test: int64 node ids of the Planetoid split (HyboNet sizes).
        missing_test_nodes: (K,) int64 ids that got zero features/labels (CiteSeer: 15).
    """

    features: np.ndarray
    labels: np.ndarray
    edges: np.ndarray
    idx_train: np.ndarray
    idx_val: np.ndarray
    idx_test: np.ndarray
    missing_test_nodes: np.ndarray


def planetoid_files(folder: Path, name: str) -> list[Path]:
    """The files :func:`read_planetoid` needs, in ``folder`` (``<data_dir>/planetoid``)."""
    return [folder / f"ind.{name}.{part}" for part in (*PARTS, "test.index")]


def _dense(obj: object, path: Path) -> np.ndarray:
    """A dense array from a pickled ``csr_matrix`` stand-in or a plain ndarray."""
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, PickledObject) and isinstance(obj.state, dict):
        state = obj.state
        shape = tuple(state.get("_shape") or state.get("shape"))
        data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
        if state.get("format", "csr") != "csr" or len(indptr) != shape[0] + 1:
            raise ValueError(f"{path}: not a CSR matrix of shape {shape}")
        out = np.zeros(shape, dtype=data.dtype)
        rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
        np.add.at(out, (rows, indices), data)  # duplicates summed, as scipy does
        return out
    raise ValueError(f"{path}: expected a CSR matrix or an ndarray, got {type(obj).__name__}")


def _graph_edges(graph: dict, num_nodes: int) -> np.ndarray:
    """Row-major ``i <= j`` edges of the undirected graph given as adjacency lists."""
    adjacency = np.zeros((num_nodes, num_nodes), dtype=bool)
    for node, neighbours in graph.items():
        if neighbours:
            adjacency[node, np.asarray(neighbours, dtype=np.int64)] = True
    adjacency |= adjacency.T
    rows, cols = np.nonzero(np.triu(adjacency))
    return np.stack([rows, cols], axis=1).astype(np.int64)


def read_planetoid(folder: Path, name: str) -> PlanetoidRaw:
    """Read ``ind.<name>.*`` from ``folder`` (see the module docstring for the conventions).

    Args:
        folder: the ``planetoid`` folder holding the ``ind.*`` files.
        name: ``"cora"`` or ``"citeseer"`` (any Planetoid name with the same layout works).

    Raises:
        FileNotFoundError: a file is missing (the caller checks first, with a better message).
        pickle.UnpicklingError: a file names a global outside the Planetoid allow-list.
    """
    objects = {part: load_restricted(folder / f"ind.{name}.{part}", PLANETOID_GLOBALS,
                                     encoding="latin1") for part in PARTS}
    x, y, tx, ty, allx, ally = (_dense(objects[p], folder / f"ind.{name}.{p}")
                                for p in PARTS[:-1])
    graph = objects["graph"]
    test_index_path = folder / f"ind.{name}.test.index"
    test_reorder = np.array([int(line) for line in test_index_path.read_text().split()],
                            dtype=np.int64)
    test_range = np.sort(test_reorder)

    # Isolated test nodes without a tx row (CiteSeer): zero rows at their ids, as Kipf's gcn.
    full_range = np.arange(test_range[0], test_range[-1] + 1)
    missing = np.setdiff1d(full_range, test_range)
    if len(missing):
        tx_ext = np.zeros((len(full_range), tx.shape[1]), dtype=tx.dtype)
        tx_ext[test_range - test_range[0]] = tx
        ty_ext = np.zeros((len(full_range), ty.shape[1]), dtype=ty.dtype)
        ty_ext[test_range - test_range[0]] = ty
        tx, ty = tx_ext, ty_ext

    features = np.vstack([allx, tx])
    features[test_reorder] = features[test_range]
    onehot = np.vstack([ally, ty])
    onehot[test_reorder] = onehot[test_range]
    labels = np.argmax(onehot, axis=1).astype(np.int64)

    num_nodes = features.shape[0]
    if len(graph) != num_nodes or max(graph) != num_nodes - 1:
        raise ValueError(f"{folder}/ind.{name}.graph has {len(graph)} nodes, features have "
                         f"{num_nodes}")
    n_train = len(y)
    n_val = min(VAL_SIZE, num_nodes - n_train - len(test_range))
    return PlanetoidRaw(
        features=features.astype(np.float32),
        labels=labels,
        edges=_graph_edges(graph, num_nodes),
        idx_train=np.arange(n_train, dtype=np.int64),
        idx_val=np.arange(n_train, n_train + n_val, dtype=np.int64),
        idx_test=test_range.astype(np.int64),
        missing_test_nodes=missing.astype(np.int64),
    )
