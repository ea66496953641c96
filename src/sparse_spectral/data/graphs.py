"""Graph data sets for HyboNet node classification (NC) and link prediction (LP).

One call gives a ready-to-train :class:`GraphData`::

    data = load_graph("airport", "nc", data_dir="../shared/data")   # split="corrected"
    data = load_graph("cora", "lp", split="hgcn")                   # HGCN/HyboNet's split

Data folder layout (``data_dir``, else ``$SST_DATA_DIR``; see ``docs/graph_data.md``)::

    planetoid/ind.{cora,citeseer}.{x,y,tx,ty,allx,ally,graph,test.index}
    hgcn/airport/airport.p
    hgcn/disease_lp/disease_lp.{edges.csv,feats.npz}
    hgcn/disease_nc/disease_nc.{edges.csv,labels.npy}   (+ feats.npz if you have it)

Preprocessing is HGCN's (``utils/data_utils.py``, kept by HyboNet):

1. features: optional row normalisation ``x / sum(x)`` (zero rows stay zero), then for
   Airport a one-hot of ``min(degree, 5)`` (6 columns) and a constant-1 column, the degree
   taken from the training graph;
2. ``adj_norm = D^-1 (A + I)`` with ``D`` the row sums of ``A + I`` (row normalisation with
   self-loops, not symmetric), ``A`` the training graph (LP: val/test edges removed).

Two split modes (``split=``):

* ``"hgcn"``: HGCN/HyboNet's splits and graph handling bit for bit, quirks included: the
  Airport NC split with duplicated and overlapping nodes, LP negatives that include the
  diagonal pairs (i, i), a training-negative pool that includes the val/test negatives,
  self-loops kept in the graph (a train self-loop weighs 2 in LP).
* ``"corrected"`` (default, for our own reports): no self-loops anywhere; NC random splits
  (Airport, Disease) stratified by class with the stated proportions, every node in exactly
  one split; LP negatives off-diagonal only, and the training pool excludes the held-out
  negatives. Cora/CiteSeer NC use Planetoid's fixed split in both modes.

Disease NC's feature file is not in the reference data: without ``disease_nc.feats.npz`` the
loader uses identity (one-hot) features and says so in :attr:`GraphData.notes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import hgcn, planetoid
from .paths import check_sha256, resolve_data_dir

GRAPH_DATASETS = ("cora", "citeseer", "airport", "disease")
GRAPH_TASKS = ("nc", "lp")
SPLITS = ("corrected", "hgcn")

#: HyboNet's per-data-set defaults (``gcn/run.*.sh`` and HGCN's ``load_data_nc``):
#: (val_prop, test_prop, normalize_feats); ``None`` props = Planetoid's fixed split.
DEFAULTS: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("cora", "nc"): (None, None, True),
    ("citeseer", "nc"): (None, None, True),
    ("airport", "nc"): (0.15, 0.15, True),
    ("disease", "nc"): (0.10, 0.60, True),
    ("cora", "lp"): (0.05, 0.10, True),
    ("citeseer", "lp"): (0.05, 0.10, True),
    ("airport", "lp"): (0.05, 0.10, True),
    ("disease", "lp"): (0.05, 0.10, False),
}
MAX_DEGREE_FEATURE = 5  # Airport degree one-hot: 0..5, higher degrees clipped to 5

DISEASE_NC_IDENTITY_NOTE = ("disease NC uses identity (one-hot) node features: the feature "
                            "file disease_nc.feats.npz is not available")
_HINT = "pass `--data-dir DIR` or set SST_DATA_DIR=DIR"


@dataclass
class GraphData:
    """A graph data set ready for full-batch training.

    Attributes:
        name, task, split: what was loaded (``GRAPH_DATASETS``, ``GRAPH_TASKS``, ``SPLITS``).
        features: (N, F) float32 after preprocessing (normalisation, Airport degree columns,
            identity features where used).
        adj: (N, N) sparse COO float32, coalesced: the training graph, symmetric, 0/1, no
            self-loops (LP: val/test edges removed).
        adj_norm: (N, N) sparse COO float32, coalesced: ``D^-1 (A + I)``, rows sum to 1;
            what HyboNet aggregates with. Under ``split="hgcn"`` ``A`` keeps the file's
            self-loops with HGCN's weights, so ``adj_norm`` can differ from
            ``rownorm(adj + I)`` on those rows (see :attr:`notes`).
        labels: (N,) int64 for NC, ``None`` for LP.
        num_classes: number of classes (0 for LP).
        idx_train, idx_val, idx_test: (n,) int64 node ids (NC), in HGCN's order under
            ``"hgcn"`` (with Airport's duplicates), sorted under ``"corrected"``.
        train_edges, val_edges, test_edges: (E, 2) int64 positive pairs ``i <= j`` (LP).
        train_edges_false: (M, 2) int64 pool of training negatives to sample from (LP).
        val_edges_false, test_edges_false: (E, 2) int64 fixed negatives (LP).
        notes: human-readable caveats to carry into logs and reports.
        rng: the ``numpy.random.RandomState(seed)`` after the split's draws. HGCN draws its
            LP training negatives from numpy's global RNG, which is in this state right
            after its split, so sampling from ``rng`` reproduces HGCN's negatives.
    """

    name: str
    task: str
    split: str
    features: torch.Tensor
    adj: torch.Tensor
    adj_norm: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    idx_train: torch.Tensor | None = None
    idx_val: torch.Tensor | None = None
    idx_test: torch.Tensor | None = None
    train_edges: torch.Tensor | None = None
    train_edges_false: torch.Tensor | None = None
    val_edges: torch.Tensor | None = None
    val_edges_false: torch.Tensor | None = None
    test_edges: torch.Tensor | None = None
    test_edges_false: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)
    rng: np.random.RandomState | None = field(default=None, repr=False)

    @property
    def num_nodes(self) -> int:
        return self.features.shape[0]

    @property
    def num_features(self) -> int:
        return self.features.shape[1]

    @property
    def num_edges(self) -> int:
        """Undirected edges of the training graph (no self-loops)."""
        return int(self.adj._nnz()) // 2

    def summary(self) -> dict:
        """Counts for logs and reports: sizes of every split (NC: also unique counts)."""
        out = {"name": self.name, "task": self.task, "split": self.split,
               "nodes": self.num_nodes, "train_graph_edges": self.num_edges,
               "features": self.num_features, "classes": self.num_classes}
        if self.task == "nc":
            for part in ("train", "val", "test"):
                idx = getattr(self, f"idx_{part}")
                out[part] = len(idx)
                out[f"{part}_unique"] = len(torch.unique(idx))
        else:
            for part in ("train", "val", "test"):
                out[f"{part}_edges"] = len(getattr(self, f"{part}_edges"))
                out[f"{part}_edges_false"] = len(getattr(self, f"{part}_edges_false"))
        return out

    def describe(self) -> str:
        """One paragraph for logs and reports."""
        s = self.summary()
        head = (f"{self.name} {self.task.upper()} (split={self.split}): {s['nodes']} nodes, "
                f"{s['train_graph_edges']} undirected edges in the training graph, "
                f"{s['features']} input features")
        if self.task == "nc":
            body = (f", {self.num_classes} classes; train/val/test "
                    f"{s['train']}/{s['val']}/{s['test']} nodes")
            if any(s[p] != s[f"{p}_unique"] for p in ("train", "val", "test")):
                body += (f" ({s['train_unique']}/{s['val_unique']}/{s['test_unique']} "
                         f"unique)")
        else:
            body = (f"; positive edges train/val/test {s['train_edges']}/{s['val_edges']}/"
                    f"{s['test_edges']}, negatives val/test {s['val_edges_false']}/"
                    f"{s['test_edges_false']}, training-negative pool "
                    f"{s['train_edges_false']}")
        notes = "".join(f" Note: {n}." for n in self.notes)
        return head + body + "." + notes


# ---------------------------------------------------------------------------------------------
# Files


#: sha256 of every graph file, as published (``SHA256SUMS`` of the reference data folder):
#: a damaged or different copy is refused before it is parsed (or unpickled).
FILE_SHA256 = {
    "hgcn/airport/airport.p":
        "ab16b04cea3666e87dbd8a5bff3de68da61330f4604fa21082f7a17e806e64d8",
    "hgcn/disease_lp/disease_lp.edges.csv":
        "b5b7e41bbfd28fc7f61590e5587622103ee9c3aa1b59911c74873a6f328dca07",
    "hgcn/disease_lp/disease_lp.feats.npz":
        "b4a726b13598c036a75e1b49f08e92820553b972966ad950b8d4d5416eb339f8",
    "hgcn/disease_lp/disease_lp.labels.npy":
        "8f2b26602764fbb785b93775d9f71194f1f36920e185af8bc5c31aea07dde858",
    "hgcn/disease_nc/disease_nc.edges.csv":
        "08b2dcf00db1e6a8f491af5294dee98197f1251a63bc9190d05fb4e77507782e",
    "hgcn/disease_nc/disease_nc.labels.npy":
        "70be7f91a854d924f3b7ac423615d75b1f9ee2506261c44113de27cc2caadd51",
    "planetoid/ind.citeseer.allx":
        "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
    "planetoid/ind.citeseer.ally":
        "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
    "planetoid/ind.citeseer.graph":
        "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
    "planetoid/ind.citeseer.test.index":
        "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    "planetoid/ind.citeseer.tx":
        "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
    "planetoid/ind.citeseer.ty":
        "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
    "planetoid/ind.citeseer.x":
        "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
    "planetoid/ind.citeseer.y":
        "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
    "planetoid/ind.cora.allx":
        "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
    "planetoid/ind.cora.ally":
        "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
    "planetoid/ind.cora.graph":
        "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
    "planetoid/ind.cora.test.index":
        "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    "planetoid/ind.cora.tx":
        "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
    "planetoid/ind.cora.ty":
        "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
    "planetoid/ind.cora.x":
        "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
    "planetoid/ind.cora.y":
        "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
}


def required_files(name: str, task: str, use_feats: bool = True) -> list[Path]:
    """Paths, relative to the data folder, that ``load_graph(name, task)`` reads."""
    if name in planetoid.PLANETOID_NAMES:
        return planetoid.planetoid_files(Path("planetoid"), name)
    if name == "airport":
        return [Path("hgcn/airport/airport.p")]
    stem = f"disease_{task}"
    files = [Path("hgcn", stem, f"{stem}.edges.csv")]
    if task == "lp" and use_feats:
        files.append(Path("hgcn", stem, f"{stem}.feats.npz"))
    if task == "nc":
        files.append(Path("hgcn", stem, f"{stem}.labels.npy"))
    return files


def _data_root(name: str, task: str, data_dir, use_feats: bool) -> Path:
    root = resolve_data_dir(data_dir)
    needed = required_files(name, task, use_feats)
    if root is None:
        raise FileNotFoundError(
            f"no data folder for graph data set '{name}' ({task}): {_HINT}, where DIR holds "
            f"{needed[0]}")
    for rel in needed:
        if not (root / rel).is_file():
            raise FileNotFoundError(
                f"graph data set '{name}' ({task}): missing file {root / rel}; {_HINT}, "
                f"where DIR/{rel} exists (see docs/graph_data.md for the layout)")
    for rel in needed:  # all present: now their content
        check_sha256(root / rel, FILE_SHA256[rel.as_posix()])
    return root


# ---------------------------------------------------------------------------------------------
# Preprocessing (HGCN's ``process`` and ``augment``)


def row_normalize(x: np.ndarray) -> np.ndarray:
    """HGCN's ``normalize``: each row divided by its sum (signed); zero-sum rows become 0.

    Computed in ``x``'s dtype, as HGCN does, so results match it bit for bit.
    """
    with np.errstate(divide="ignore"):
        r_inv = np.power(x.sum(axis=1), -1)
    r_inv[np.isinf(r_inv)] = 0.0
    return x * r_inv[:, None]


def degree_features(graph: np.ndarray) -> np.ndarray:
    """(N, 7): one-hot of ``min(column sum, 5)`` then a constant 1 (HGCN's ``augment``)."""
    degree = np.minimum(graph.sum(axis=0).astype(np.int64), MAX_DEGREE_FEATURE)
    onehot = np.eye(MAX_DEGREE_FEATURE + 1)[degree]
    return np.concatenate([onehot, np.ones((len(graph), 1))], axis=1)


def _sparse(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> torch.Tensor:
    indices = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
    values = torch.from_numpy(np.asarray(values, dtype=np.float32))
    return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=True).coalesce()


def normalized_adjacency(graph: np.ndarray) -> torch.Tensor:
    """``D^-1 (graph + I)`` as sparse COO float32 (float64 arithmetic, as HGCN/scipy).

    Args:
        graph: (N, N) non-negative integer weights (0/1, or 2 for an HGCN LP self-loop).
    """
    mask = graph != 0
    np.fill_diagonal(mask, True)
    rows, cols = np.nonzero(mask)
    weights = graph[rows, cols].astype(np.float64) + (rows == cols)
    r_inv = np.power(graph.sum(axis=1, dtype=np.float64) + 1.0, -1)
    return _sparse(rows, cols, weights * r_inv[rows], len(graph))


def binary_adjacency(graph: np.ndarray) -> torch.Tensor:
    """The 0/1 off-diagonal part of ``graph`` as sparse COO float32."""
    mask = graph != 0
    np.fill_diagonal(mask, False)
    rows, cols = np.nonzero(mask)
    return _sparse(rows, cols, np.ones(len(rows)), len(graph))


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Raw:
    features: np.ndarray | None  # None: the file is absent, use identity features
    adjacency: np.ndarray        # (N, N) bool, self-loops as in the file
    labels: np.ndarray | None
    fixed_split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


def _read_raw(name: str, task: str, root: Path, use_feats: bool) -> _Raw:
    if name in planetoid.PLANETOID_NAMES:
        raw = planetoid.read_planetoid(root / "planetoid", name)
        n = len(raw.labels)
        adjacency = np.zeros((n, n), dtype=bool)
        adjacency[raw.edges[:, 0], raw.edges[:, 1]] = True
        adjacency |= adjacency.T
        notes = []
        if len(raw.missing_test_nodes):
            notes.append(f"{len(raw.missing_test_nodes)} nodes have no Planetoid feature or "
                         f"label row: they get zero features and label 0 and are in no "
                         f"split (as Kipf's gcn and PyTorch Geometric do)")
        split = (raw.idx_train, raw.idx_val, raw.idx_test)
        return _Raw(raw.features, adjacency, raw.labels, split, notes)
    if name == "airport":
        feat, adjacency = hgcn.read_airport(root / "hgcn" / "airport" / "airport.p")
        if task == "nc":
            labels = hgcn.airport_labels(feat)
            feat = feat[:, :hgcn.AIRPORT_LABEL_COLUMN]
            return _Raw(feat, adjacency, labels)
        return _Raw(feat, adjacency, None)
    stem = f"disease_{task}"
    folder = root / "hgcn" / stem
    has_feats = (folder / f"{stem}.feats.npz").is_file()
    raw = hgcn.read_disease(folder, stem, features=use_feats and has_feats,
                            labels=task == "nc")
    notes = [DISEASE_NC_IDENTITY_NOTE] if task == "nc" and use_feats and not has_feats else []
    return _Raw(raw.features, raw.adjacency, raw.labels, None, notes)


def _check_choice(kind: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"unknown graph {kind} {value!r}; allowed: {', '.join(allowed)}")


def _check_prop(kind: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{kind} must be a fraction in [0, 1), got {value!r}")


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def load_graph(name: str, task: str, data_dir: str | os.PathLike | None = None,
               split: str = "corrected", seed: int = 1234, val_prop: float | None = None,
               test_prop: float | None = None, normalize_feats: bool | None = None,
               use_feats: bool = True) -> GraphData:
    """Load a graph data set with HGCN/HyboNet's preprocessing and the chosen split.

    Args:
        name: one of ``GRAPH_DATASETS``.
        task: ``"nc"`` (node classification) or ``"lp"`` (link prediction).
        data_dir: the data folder (layout in the module docstring); ``None`` reads
            ``$SST_DATA_DIR``.
        split: ``"corrected"`` (default) or ``"hgcn"`` (HGCN/HyboNet's, quirks included).
        seed: the split seed (HGCN's ``split_seed``, 1234 in every HyboNet script).
        val_prop, test_prop: held-out fractions; ``None`` = HyboNet's default for the data
            set (:data:`DEFAULTS`). Cora/CiteSeer NC use Planetoid's fixed split and refuse
            them.
        normalize_feats: row-normalise the features; ``None`` = HyboNet's default (on,
            except Disease LP).
        use_feats: ``False`` replaces the features by the identity (as HGCN's flag; Airport
            still gets its degree columns).

    Returns:
        A :class:`GraphData`.

    Raises:
        ValueError: unknown name/task/split, or bad proportions.
        FileNotFoundError: no data folder, or a file is missing (the message names the
            path and says to pass ``--data-dir`` or set ``SST_DATA_DIR``).
        pickle.UnpicklingError: a pickle names a global outside the loader's allow-list.
    """
    _check_choice("data set", name, GRAPH_DATASETS)
    _check_choice("task", task, GRAPH_TASKS)
    _check_choice("split", split, SPLITS)
    default_val, default_test, default_norm = DEFAULTS[(name, task)]
    if default_val is None and (val_prop is not None or test_prop is not None):
        raise ValueError(f"{name} NC uses Planetoid's fixed split; val_prop/test_prop do not "
                         f"apply (got {val_prop!r}, {test_prop!r})")
    val_prop = default_val if val_prop is None else val_prop
    test_prop = default_test if test_prop is None else test_prop
    if val_prop is not None:
        _check_prop("val_prop", val_prop)
        _check_prop("test_prop", test_prop)
        if val_prop + test_prop >= 1.0:
            raise ValueError(f"val_prop + test_prop must be < 1, got {val_prop} + {test_prop}")
    normalize_feats = default_norm if normalize_feats is None else bool(normalize_feats)
    corrected = split == "corrected"

    root = _data_root(name, task, data_dir, use_feats)
    raw = _read_raw(name, task, root, use_feats)
    notes = list(raw.notes)
    n = len(raw.adjacency)
    rng = np.random.RandomState(seed)
    self_loops = int(np.trace(raw.adjacency))
    adjacency = raw.adjacency & ~np.eye(n, dtype=bool) if corrected else raw.adjacency
    if self_loops:
        notes.append(f"the file has {self_loops} self-loop(s): " + (
            "dropped (corrected split)" if corrected else
            "kept as HGCN does (in adj_norm and the degree features; for LP among the "
            "positive pairs, weight 2 when a training edge); adj omits them"))

    out: dict = {}
    if task == "nc":
        if raw.fixed_split is not None:
            train, val, test = raw.fixed_split
        elif corrected:
            train, val, test = hgcn.split_nodes_stratified(raw.labels, val_prop, test_prop, rng)
        else:
            train, val, test = hgcn.split_nodes_hgcn(raw.labels, val_prop, test_prop, rng)
            overlap = len(np.intersect1d(train, test))
            if overlap or len(np.unique(train)) != len(train):
                notes.append(f"HGCN split quirk: duplicated node ids and {overlap} nodes in "
                             f"both train and test, {len(np.intersect1d(train, val))} in both "
                             f"train and val")
        out.update(idx_train=_tensor(train), idx_val=_tensor(val), idx_test=_tensor(test),
                   labels=torch.from_numpy(raw.labels.astype(np.int64)),
                   num_classes=int(raw.labels.max()) + 1)
        graph = adjacency.astype(np.int8)
    else:
        edges = hgcn.mask_edges(adjacency, val_prop, test_prop, rng, corrected=corrected)
        for key in ("train_edges", "train_edges_false", "val_edges", "val_edges_false",
                    "test_edges", "test_edges_false"):
            out[key] = _tensor(getattr(edges, key))
        out.update(labels=None, num_classes=0)
        graph = edges.train_adjacency
        if not corrected:
            notes.append("HGCN LP quirks kept: negatives include the diagonal pairs (i, i) and "
                         "the training-negative pool includes the val/test negatives")

    features = raw.features if use_feats and raw.features is not None else np.eye(n)
    if normalize_feats:
        features = row_normalize(features)
    if name == "airport":
        features = np.concatenate([features.astype(np.float32),
                                   degree_features(graph).astype(np.float32)], axis=1)
    return GraphData(
        name=name, task=task, split=split,
        features=torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
        adj=binary_adjacency(graph), adj_norm=normalized_adjacency(graph),
        notes=notes, rng=rng, **out)
