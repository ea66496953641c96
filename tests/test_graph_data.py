"""Tests for the graph data loaders (sparse_spectral.data.graphs) on the reference data.

Expected counts for ``split="hgcn"`` come from HyboNet's reference run of the official code
(/work/shared/reference/hybonet.md section 2.1: sizes, Airport's overlap counts, LP edge
counts); counts for ``split="corrected"`` are recomputed here from the labels and the
stated proportions. Edge-set properties are checked directly on the returned tensors.
"""

from __future__ import annotations

import functools
import os
import pickle
import pickletools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_spectral.data import hgcn
from sparse_spectral.data.graphs import (
    DISEASE_NC_IDENTITY_NOTE,
    GRAPH_DATASETS,
    GRAPH_TASKS,
    SPLITS,
    load_graph,
)
from sparse_spectral.data.paths import ChecksumError
from sparse_spectral.data.restricted_pickle import (
    AIRPORT_GLOBALS,
    PLANETOID_GLOBALS,
    load_restricted,
    loads_restricted,
)


@pytest.fixture(scope="module")
def nc(reference_data):
    """NC loads are cheap and reused: a cached ``(name, split, seed) -> GraphData``."""
    @functools.cache
    def get(name: str, split: str = "hgcn", seed: int = 1234):
        return load_graph(name, "nc", reference_data, split=split, seed=seed)
    return get


def keys(edges: torch.Tensor, n: int) -> np.ndarray:
    """(E, 2) pairs -> sorted int64 keys ``i * n + j`` (for set operations)."""
    e = edges.numpy()
    return np.sort(e[:, 0] * n + e[:, 1])


def member(queries: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``queries`` occur in ``sorted_keys`` (no re-sort of the big side)."""
    pos = np.clip(np.searchsorted(sorted_keys, queries), 0, len(sorted_keys) - 1)
    return sorted_keys[pos] == queries


def dense_int(adj: torch.Tensor) -> np.ndarray:
    return adj.to_dense().numpy().astype(np.int64)


# -------------------------------------------------------------------------------------------
# Node classification

# (N, undirected edges without self-loops, self-loops, F, classes, hgcn train/val/test sizes)
NC_EXPECTED = {
    "cora": (2708, 5278, 0, 1433, 7, (140, 1000, 1000)),
    "citeseer": (3327, 4552, 124, 3703, 6, (120, 1000, 1000)),
    "airport": (3188, 18630, 1, 4 + 7, 4, (3364, 524, 524)),
    "disease": (1044, 1043, 0, 1044, 2, (748, 42, 254)),
}


@pytest.mark.parametrize("name", GRAPH_DATASETS)
def test_nc_counts_hgcn(nc, name):
    n, e, loops, f, c, sizes = NC_EXPECTED[name]
    d = nc(name)
    assert (d.num_nodes, d.num_edges, d.num_features, d.num_classes) == (n, e, f, c)
    assert d.features.dtype == torch.float32 and d.features.shape == (n, f)
    assert d.labels.dtype == torch.int64 and d.labels.shape == (n,)
    assert int(d.labels.min()) == 0 and int(d.labels.max()) == c - 1
    assert tuple(len(i) for i in (d.idx_train, d.idx_val, d.idx_test)) == sizes
    assert all(i.dtype == torch.int64 for i in (d.idx_train, d.idx_val, d.idx_test))
    assert (f"{loops} self-loop" in " ".join(d.notes)) == (loops > 0)
    assert (d.train_edges, d.val_edges) == (None, None)


def test_planetoid_split_is_hybonets(nc):
    """Train = first len(y) nodes, val = the next 1000 (HyboNet; HGCN had 500), test = the
    Planetoid test ids; the same in both modes; CiteSeer's 15 padded nodes in no split."""
    for name, n_train, test_range in (("cora", 140, (1708, 2707)),
                                      ("citeseer", 120, (2312, 3326))):
        d, c = nc(name), nc(name, "corrected")
        assert torch.equal(d.idx_train, torch.arange(n_train))
        assert torch.equal(d.idx_val, torch.arange(n_train, n_train + 1000))
        assert int(d.idx_test.min()) == test_range[0] and int(d.idx_test.max()) == test_range[1]
        for part in ("idx_train", "idx_val", "idx_test"):
            assert torch.equal(getattr(d, part), getattr(c, part))
    cite = nc("citeseer")
    padded = np.setdiff1d(np.arange(2312, 3327), cite.idx_test.numpy())
    assert len(padded) == 15
    assert (cite.features[padded] == 0).all() and (cite.labels[padded] == 0).all()
    assert any("15 nodes have no Planetoid feature" in s for s in cite.notes)


def test_airport_hgcn_split_quirk(nc):
    """HGCN's split_data on 4 classes: duplicates and train/test overlap (HGCN issue #27)."""
    d = nc("airport")
    tr, va, te = (i.numpy() for i in (d.idx_train, d.idx_val, d.idx_test))
    assert (len(np.unique(tr)), len(np.unique(va)), len(np.unique(te))) == (2691, 505, 506)
    assert len(np.intersect1d(tr, te)) == 225
    assert len(np.intersect1d(tr, va)) == 246
    assert any("225 nodes in both train and test" in s for s in d.notes)
    # labels: column 4 binned into 4 classes; labels 2 and 3 sit in both of HGCN's lists
    assert np.bincount(d.labels.numpy()).tolist() == [521, 1443, 999, 225]


def test_disease_hgcn_split_is_disjoint_but_unbalanced(nc):
    d = nc("disease")
    parts = [set(i.tolist()) for i in (d.idx_train, d.idx_val, d.idx_test)]
    assert sum(len(p) for p in parts) == len(set.union(*parts)) == 1044
    # m = min(211 positives, 833 negatives): val 2*round(.1m), test 2*round(.6m)
    assert d.labels[d.idx_val].sum() == 21 and d.labels[d.idx_test].sum() == 127


@pytest.mark.parametrize("name,props", [("airport", (0.15, 0.15)), ("disease", (0.10, 0.60))])
def test_corrected_nc_split_stratified_and_disjoint(nc, name, props):
    d = nc(name, "corrected")
    tr, va, te = (i.numpy() for i in (d.idx_train, d.idx_val, d.idx_test))
    assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == 0
    assert len(np.intersect1d(va, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(d.num_nodes))
    labels = d.labels.numpy()
    for c in range(d.num_classes):
        n_c = int((labels == c).sum())
        assert (labels[va] == c).sum() == round(props[0] * n_c)
        assert (labels[te] == c).sum() == round(props[1] * n_c)
    assert not any("quirk" in s for s in d.notes)


def test_disease_nc_identity_features_and_note(nc):
    for split in SPLITS:
        d = nc("disease", split)
        assert torch.equal(d.features, torch.eye(1044))
        assert DISEASE_NC_IDENTITY_NOTE in d.notes
        assert "identity" in d.describe()


def test_airport_features(nc):
    """Columns 0-3 row-normalised (rows sum to 1, signs kept), then a one-hot of
    min(degree, 5) from the training graph and a constant 1."""
    for split in SPLITS:
        d = nc("airport", split)
        x = d.features.double()
        assert torch.allclose(x[:, :4].sum(1), torch.ones(d.num_nodes, dtype=torch.float64),
                              atol=1e-5)
        degree = torch.from_numpy(dense_int(d.adj).sum(0))
        if split == "hgcn":  # HGCN counts the one self-loop (node 2349) in the degree
            degree[2349] += 1
        onehot = torch.nn.functional.one_hot(degree.clamp(max=5), 6).double()
        assert torch.equal(x[:, 4:10], onehot)
        assert (x[:, 10] == 1).all()


def test_nc_determinism_and_seed(reference_data, nc):
    for split in SPLITS:
        again = load_graph("airport", "nc", reference_data, split=split)
        other = nc("airport", split, 7)
        assert torch.equal(again.idx_test, nc("airport", split).idx_test)
        assert not torch.equal(other.idx_test, again.idx_test)


# -------------------------------------------------------------------------------------------
# Adjacency


@pytest.mark.parametrize("name", GRAPH_DATASETS)
def test_adjacency_and_normalisation(nc, name):
    for split in SPLITS:
        d = nc(name, split)
        n = d.num_nodes
        assert d.adj.is_sparse and d.adj.is_coalesced() and d.adj.dtype == torch.float32
        rows, cols = d.adj.indices()
        assert (d.adj.values() == 1).all() and (rows != cols).all()
        assert torch.equal(d.adj.t().coalesce().indices(), d.adj.indices())  # symmetric
        assert d.adj_norm.is_coalesced() and d.adj_norm.dtype == torch.float32
        assert torch.allclose(torch.sparse.sum(d.adj_norm, dim=1).to_dense(), torch.ones(n),
                              atol=1e-5)
        if split == "corrected":  # exactly D^-1 (A + I), computed in float64
            loops = torch.arange(n)
            degree = torch.bincount(rows, minlength=n).double() + 1
            ref = torch.sparse_coo_tensor(
                torch.cat([d.adj.indices(), torch.stack([loops, loops])], dim=1),
                torch.cat([1 / degree[rows], 1 / degree]).float(), (n, n),
                check_invariants=True).coalesce()
            assert torch.equal(d.adj_norm.indices(), ref.indices())
            assert torch.equal(d.adj_norm.values(), ref.values())


def _file_self_loops(reference_data: Path, name: str) -> np.ndarray:
    """Nodes with a self-loop, read from the raw file."""
    if name == "airport":
        _, adjacency = hgcn.read_airport(reference_data / "hgcn" / "airport" / "airport.p")
        return np.flatnonzero(np.diag(adjacency))
    graph = load_restricted(reference_data / "planetoid" / f"ind.{name}.graph",
                            PLANETOID_GLOBALS, encoding="latin1")
    return np.array(sorted(k for k, v in graph.items() if k in v))


@pytest.mark.parametrize("name,count", [("citeseer", 124), ("airport", 1), ("cora", 0)])
def test_hgcn_keeps_self_loops_in_adj_norm(reference_data, nc, name, count):
    """HGCN's A + I puts 2 on a self-loop node's diagonal: weight 2 / (degree + 2) there,
    1 / (degree + 1) elsewhere; the corrected split has 1 / (degree + 1) everywhere."""
    loops = _file_self_loops(reference_data, name).astype(np.int64)
    assert len(loops) == count
    for split in SPLITS:
        d = nc(name, split)
        diag = d.adj_norm.to_dense().diagonal().double().numpy()
        degree = dense_int(d.adj).sum(1)  # adj has no self-loops in either mode
        expected = 1.0 / (degree + 1)
        if split == "hgcn":
            expected[loops] = 2.0 / (degree[loops] + 2)
        assert np.allclose(diag, expected, rtol=0, atol=1e-6)


# -------------------------------------------------------------------------------------------
# Link prediction (one load per data set and split: the negative pools are millions of pairs)

# (N, undirected edges incl. self-loops, self-loops, F, normalize_feats default)
LP_EXPECTED = {
    "cora": (2708, 5278, 0, 1433),
    "citeseer": (3327, 4676, 124, 3703),
    "airport": (3188, 18631, 1, 5 + 7),
    "disease": (2665, 2664, 0, 11),
}
# HyboNet's reference run (val / test / train positives) for the hgcn split
LP_REFERENCE = {"cora": (263, 527, 4488), "airport": (931, 1863, 15837),
                "disease": (133, 266, 2265)}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", GRAPH_DATASETS)
def test_lp_edge_sets(reference_data, name, split):
    n, e_all, loops, f = LP_EXPECTED[name]
    d = load_graph(name, "lp", reference_data, split=split)
    assert (d.num_nodes, d.num_features, d.labels, d.num_classes) == (n, f, None, 0)
    assert (d.idx_train, d.idx_val, d.idx_test) == (None, None, None)
    m = e_all if split == "hgcn" else e_all - loops  # corrected drops self-loops
    n_val, n_test = int(0.05 * m), int(0.10 * m)
    sizes = (len(d.val_edges), len(d.test_edges), len(d.train_edges))
    assert sizes == (n_val, n_test, m - n_val - n_test)
    if split == "hgcn" and name in LP_REFERENCE:
        assert sizes == LP_REFERENCE[name]
    assert (len(d.val_edges_false), len(d.test_edges_false)) == (n_val, n_test)
    for t in (d.train_edges, d.val_edges, d.test_edges, d.train_edges_false):
        assert t.dtype == torch.int64 and t.shape[1] == 2
        assert (t[:, 0] <= t[:, 1]).all()

    train, val, test = (keys(t, n) for t in (d.train_edges, d.val_edges, d.test_edges))
    everything = np.concatenate([train, val, test])
    assert len(np.unique(everything)) == m  # the three positive sets partition the graph
    # adj is the training graph: train edges present (bar self-loops), val/test absent
    a = dense_int(d.adj)
    off = d.train_edges[:, 0] != d.train_edges[:, 1]
    assert a.sum() // 2 == int(off.sum()) == d.num_edges
    assert (a[d.train_edges[off, 0], d.train_edges[off, 1]] == 1).all()
    for held in (d.val_edges, d.test_edges):
        assert (a[held[:, 0], held[:, 1]] == 0).all()
    # false edges are non-edges of the full graph
    val_f, test_f = keys(d.val_edges_false, n), keys(d.test_edges_false, n)
    everything.sort()
    for false in (val_f, test_f):
        assert not member(false, everything).any()
    pool = keys(d.train_edges_false, n)
    assert not member(train, pool).any()  # the pool: non-edges of the training graph
    assert member(np.concatenate([val, test]), pool).all()  # held-out positives included
    pool_diag = int((d.train_edges_false[:, 0] == d.train_edges_false[:, 1]).sum())
    if split == "corrected":
        assert (np.diff(pool) > 0).all()  # no duplicates
        assert len(pool) == n * (n - 1) // 2 - len(train) - n_val - n_test
        assert not member(np.concatenate([val_f, test_f]), pool).any()
        assert pool_diag == 0
        for t in (d.val_edges_false, d.test_edges_false, d.train_edges):
            assert (t[:, 0] != t[:, 1]).all()
    else:  # HGCN: every negative (diagonal pairs included) plus the held-out positives
        n_neg = n * (n + 1) // 2 - m
        assert len(pool) == n_neg + n_val + n_test
        assert member(np.concatenate([val_f, test_f]), pool).all()
        assert pool_diag == n - loops + int((d.val_edges[:, 0] == d.val_edges[:, 1]).sum()
                                            + (d.test_edges[:, 0] == d.test_edges[:, 1]).sum())
        assert any("diagonal pairs" in s for s in d.notes)
    rows = torch.sparse.sum(d.adj_norm, dim=1).to_dense()
    assert torch.allclose(rows, torch.ones(n), atol=1e-5)


def test_lp_determinism_and_seed(reference_data):
    a = load_graph("disease", "lp", reference_data)
    b = load_graph("disease", "lp", reference_data)
    c = load_graph("disease", "lp", reference_data, seed=5, normalize_feats=True)
    for key in ("train_edges", "val_edges", "val_edges_false", "test_edges_false"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert not torch.equal(a.test_edges, c.test_edges)
    # the returned generator continues the split's stream (HGCN samples negatives from it)
    assert np.array_equal(a.rng.randint(0, 100, 5), b.rng.randint(0, 100, 5))
    # Disease LP keeps raw (unnormalised) features by default, as HyboNet's script
    assert not torch.allclose(a.features.sum(1), torch.ones(a.num_nodes))
    assert torch.allclose(c.features.double().sum(1), torch.ones(a.num_nodes).double(),
                          atol=1e-3)  # one raw row sums to ~1e-3, so float32 rounding shows


# -------------------------------------------------------------------------------------------
# Restricted unpickler


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _protocol0_global(module: str, name: str) -> bytes:
    """A protocol-0 pickle that calls ``module.name('x')``."""
    return f"c{module}\n{name}\n(S'x'\ntR.".encode()


@pytest.mark.parametrize("allowed", [AIRPORT_GLOBALS, PLANETOID_GLOBALS],
                         ids=["airport", "planetoid"])
def test_restricted_unpickler_refuses_os_system(tmp_path, allowed):
    marker = tmp_path / "pwned"
    for protocol in (0, 2, 4):
        data = pickle.dumps(_Evil(str(marker)), protocol=protocol)
        module = os.system.__module__  # 'posix' on Linux: pickle records the real module
        with pytest.raises(pickle.UnpicklingError, match=rf"refused global '{module}\.system'"):
            loads_restricted(data, allowed)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global 'os\.system'"):
        loads_restricted(_protocol0_global("os", "system"), allowed)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("builtins", "getattr"),
                                         ("collections", "OrderedDict"),
                                         ("networkx.classes.digraph", "DiGraph"),
                                         ("numpy", "load"), ("subprocess", "Popen")])
def test_restricted_unpickler_refuses_other_globals(module, name):
    for allowed in (AIRPORT_GLOBALS, PLANETOID_GLOBALS):
        with pytest.raises(pickle.UnpicklingError) as info:
            loads_restricted(_protocol0_global(module, name), allowed)
        assert f"'{module}.{name}'" in str(info.value)
        assert "allows only" in str(info.value)


def test_restricted_unpickler_refuses_object_arrays():
    data = pickle.dumps(np.array([1, "a"], dtype=object), protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="object arrays"):
        loads_restricted(data, PLANETOID_GLOBALS)
    # The dtype as bare text, to ndarray and to _reconstruct (numpy.dtype never called).
    for forged in (b"cnumpy\nndarray\n((I2\ntS'O'\ntR.",
                   b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'O'\ntR."):
        with pytest.raises(pickle.UnpicklingError, match="object arrays"):
            loads_restricted(forged, PLANETOID_GLOBALS)
    # A plain dtype whose pickled state sets the object flags afterwards (63).
    plain = pickle.dumps(np.array([1, "a"], dtype=object), protocol=3).replace(b"O8", b"f8")
    with pytest.raises(pickle.UnpicklingError, match="forged state for numpy dtype"):
        loads_restricted(plain, PLANETOID_GLOBALS)
    # Numeric arrays still load (protocol 5 would name numpy's _frombuffer: not allowed).
    for protocol in (3, 4):
        loaded = loads_restricted(pickle.dumps(np.arange(4.0), protocol=protocol),
                                  PLANETOID_GLOBALS)
        assert loaded.dtype == np.float64 and loaded.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_graph_files_are_checked_against_their_published_sha256(tmp_path, reference_data):
    folder = tmp_path / "planetoid"
    shutil.copytree(reference_data / "planetoid", folder)
    damaged = bytearray((folder / "ind.cora.tx").read_bytes())
    damaged[len(damaged) // 2] ^= 0x01  # one flipped bit
    (folder / "ind.cora.tx").write_bytes(bytes(damaged))
    with pytest.raises(ChecksumError, match=r"checksum mismatch for .*ind\.cora\.tx"):
        load_graph("cora", "nc", tmp_path)
    assert load_graph("citeseer", "nc", tmp_path).num_nodes == 3327  # its files are intact


def test_allow_lists_are_exactly_what_the_files_name(reference_data):
    """Each reference pickle names only allow-listed globals (read from the opcodes)."""
    def named(path: Path) -> set[tuple[str, str]]:
        out, strings = set(), []
        for op, arg, _ in pickletools.genops(path.read_bytes()):
            if op.name == "GLOBAL":
                out.add(tuple(arg.split(" ", 1)))
            elif op.name == "STACK_GLOBAL":
                out.add((strings[-2], strings[-1]))
            elif isinstance(arg, str):
                strings.append(arg)
        return out

    airport = named(reference_data / "hgcn" / "airport" / "airport.p")
    assert airport == set(AIRPORT_GLOBALS)
    planetoid = set().union(*(named(p) for p in (reference_data / "planetoid").glob("ind.*")
                              if not p.name.endswith("test.index")))
    assert planetoid <= set(PLANETOID_GLOBALS)
    assert load_restricted(reference_data / "planetoid" / "ind.cora.y", PLANETOID_GLOBALS,
                           encoding="latin1").shape == (140, 7)


def test_load_graph_refuses_hostile_airport_file(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "hgcn" / "airport"
    folder.mkdir(parents=True)
    (folder / "airport.p").write_bytes(pickle.dumps(_Evil(str(marker))))
    with pytest.raises(ChecksumError, match="checksum mismatch"):  # refused before unpickling
        load_graph("airport", "nc", tmp_path)
    with pytest.raises(pickle.UnpicklingError, match="refused global"):  # and if it got there
        hgcn.read_airport(folder / "airport.p")
    assert not marker.exists()


# -------------------------------------------------------------------------------------------
# Bad input


def test_unknown_name_task_split(reference_data):
    with pytest.raises(ValueError, match=r"unknown graph data set 'pubmed'; allowed: cora, "
                                         r"citeseer, airport, disease"):
        load_graph("pubmed", "nc", reference_data)
    with pytest.raises(ValueError, match=r"unknown graph task 'gc'; allowed: nc, lp"):
        load_graph("cora", "gc", reference_data)
    with pytest.raises(ValueError, match=r"unknown graph split 'random'; allowed: corrected, "
                                         r"hgcn"):
        load_graph("cora", "nc", reference_data, split="random")
    assert GRAPH_TASKS == ("nc", "lp")


def test_bad_proportions(reference_data):
    with pytest.raises(ValueError, match="Planetoid's fixed split"):
        load_graph("cora", "nc", reference_data, val_prop=0.1)
    with pytest.raises(ValueError, match=r"val_prop must be a fraction in \[0, 1\), got 1.5"):
        load_graph("airport", "nc", reference_data, val_prop=1.5)
    with pytest.raises(ValueError, match="val_prop \\+ test_prop must be < 1"):
        load_graph("disease", "lp", reference_data, val_prop=0.5, test_prop=0.5)


def test_missing_files_name_the_path_and_the_option(tmp_path, reference_data, monkeypatch):
    for name, task, rel in (("cora", "nc", "planetoid/ind.cora.x"),
                            ("airport", "lp", "hgcn/airport/airport.p"),
                            ("disease", "lp", "hgcn/disease_lp/disease_lp.edges.csv")):
        with pytest.raises(FileNotFoundError) as info:
            load_graph(name, task, tmp_path)
        message = str(info.value)
        assert str(tmp_path / rel) in message
        assert "--data-dir" in message and "SST_DATA_DIR" in message
    # one file missing among present ones
    folder = tmp_path / "planetoid"
    shutil.copytree(reference_data / "planetoid", folder)
    (folder / "ind.citeseer.graph").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing file .*ind\.citeseer\.graph"):
        load_graph("citeseer", "lp", tmp_path)
    # no folder at all
    monkeypatch.delenv("SST_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"no data folder .*--data-dir.*SST_DATA_DIR"):
        load_graph("cora", "nc")
    # the environment variable is honoured
    monkeypatch.setenv("SST_DATA_DIR", str(reference_data))
    assert load_graph("disease", "nc").num_nodes == 1044


def test_describe_mentions_counts_and_notes(nc):
    text = nc("airport").describe()
    assert "3188 nodes" in text and "3364/524/524" in text and "2691/505/506 unique" in text
    assert "225 nodes in both train and test" in text
    assert "\n" not in text  # one paragraph
