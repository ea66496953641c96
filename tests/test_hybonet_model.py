"""HyboNet's graph model: structure, losses, metrics, and every training method on it.

The graph is a small synthetic one built here (two-block community graph with noisy class
features), in the loaders' ``GraphData`` layout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import geoopt
import numpy as np
import pytest
import torch

from sparse_spectral import make_method
from sparse_spectral.hyperbolic import (
    CombinedOptimizer,
    HyboNetRiemannianAdam,
    LorentzLinear,
    build_hyperbolic_optimizer,
    check_point,
    expmap0,
    manifold_parameters,
)
from sparse_spectral.methods import SST_VARIANTS
from sparse_spectral.methods.galore_optim import GaLoreAdamW
from sparse_spectral.models.hybonet import (
    HYBONET_TARGETS,
    HyboNetGraphModel,
    hinge_loss,
    margin_loss,
    sample_negatives,
    train_graph_step,
)
from sparse_spectral.spectral import SlotAdamW
from sparse_spectral.targeting import find_target_modules

RANK, DIM = 2, 16
CASES = {
    "full": {},
    "lora": {"rank": RANK},
    "relora": {"rank": RANK, "merge_interval": 2},
    "galore": {"rank": RANK, "update_proj_gap": 2, "scale": 1.0},
    "sst": {"rank": RANK, "iteration_interval": 2},
    **{name: {"rank": RANK, "iteration_interval": 2} for name in SST_VARIANTS},
}
KEEPS_INITIAL_OUTPUTS = set(CASES) - {"sst-random-init"}
methods = pytest.mark.parametrize("name", sorted(CASES))


@dataclass
class Graph:
    features: torch.Tensor
    adj_norm: torch.Tensor
    labels: torch.Tensor
    idx_train: torch.Tensor
    idx_val: torch.Tensor
    idx_test: torch.Tensor
    train_edges: torch.Tensor
    train_edges_false: torch.Tensor
    val_edges: torch.Tensor
    val_edges_false: torch.Tensor
    test_edges: torch.Tensor
    test_edges_false: torch.Tensor


def make_graph(n: int = 48, classes: int = 3, feats: int = 10, seed: int = 0) -> Graph:
    """Community graph: dense within a class, sparse across; features = noisy class means."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % classes
    same = labels[:, None] == labels[None, :]
    adj = np.triu(rng.rand(n, n) < np.where(same, 0.3, 0.02), 1)
    adj = (adj | adj.T).astype(np.float32)
    means = rng.rand(classes, feats)
    x = np.clip(means[labels] + 0.3 * rng.rand(n, feats), 0, None).astype(np.float32)
    x /= x.sum(1, keepdims=True)
    a = adj + np.eye(n, dtype=np.float32)
    adj_norm = torch.from_numpy(a / a.sum(1, keepdims=True)).to_sparse()
    pos = np.argwhere(np.triu(adj, 1))
    neg = np.argwhere(np.triu(1 - adj))  # includes (i, i) pairs, as HGCN's mask_edges does
    rng.shuffle(pos)
    rng.shuffle(neg)
    nv, nt = max(1, len(pos) // 20), max(1, len(pos) // 10)
    idx = rng.permutation(n)
    t = torch.as_tensor
    return Graph(t(x), adj_norm, t(labels, dtype=torch.long), t(idx[:24]), t(idx[24:36]),
                 t(idx[36:]), t(pos[nv + nt:]), t(np.concatenate([neg, pos[:nv + nt]])),
                 t(pos[:nv]), t(neg[:nv]), t(pos[nv:nv + nt]), t(neg[nv:nv + nt]))


GRAPH = make_graph()


def build(task: str = "nc", seed: int = 0, **kw) -> HyboNetGraphModel:
    torch.manual_seed(seed)
    settings = dict(num_classes=3 if task == "nc" else None, dim=DIM, num_layers=3)
    return HyboNetGraphModel(task, GRAPH.features.shape[1], **{**settings, **kw})


def prepared(name: str, task: str = "nc", **kw):
    method = make_method(name, target_modules=HYBONET_TARGETS, **CASES[name])
    model = method.prepare(build(task, **kw))
    return model, method


def hyperboloid_ok(x: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((check_point(x) / (x[..., 0] ** 2).clamp_min(1)).max() <= tol)


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("task,layers,convs", [("nc", 3, 2), ("nc", 2, 1), ("lp", 2, 2)])
def test_encoder_depth_and_shapes_follow_hybonet(task, layers, convs):
    model = build(task, num_layers=layers)
    names = [n for n, _ in find_target_modules(model, HYBONET_TARGETS)]
    assert names == [f"encoder.layers.{i}.transform.linear" for i in range(convs)]
    assert [n for n, _ in find_target_modules(model, "all-linear")] == names
    first = model.encoder.layers[0].transform.linear
    assert tuple(first.weight.shape) == (DIM, GRAPH.features.shape[1] + 1)
    assert model.encoder.layers[0].transform.nonlin is None
    h = model(GRAPH.features, GRAPH.adj_norm)
    assert h.shape == (48, DIM) and hyperboloid_ok(h)


def test_feature_lift_is_reused_only_for_the_same_unchanged_tensor():
    model = build("nc", num_layers=3)
    features = GRAPH.features.clone()
    lifted = model.encoder.lift(features)
    assert torch.equal(lifted, expmap0(torch.cat([torch.zeros(len(features), 1), features], 1)))
    assert model.encoder.lift(features) is lifted  # cached
    assert model.encoder.lift(features.clone()) is not lifted  # another tensor: recomputed
    features.mul_(2.0)  # an in-place change bumps the version: recomputed
    again = model.encoder.lift(features)
    assert again is not lifted and not torch.equal(again, lifted)
    grad_features = GRAPH.features.clone().requires_grad_(True)
    model(grad_features, GRAPH.adj_norm).sum().backward()  # not cached: the gradient flows
    assert grad_features.grad is not None and grad_features.grad.abs().sum() > 0


def test_relu_is_applied_from_the_second_layer_on_and_parameter_roles():
    model = build("nc", num_layers=4, act="relu")
    assert [layer.transform.nonlin is not None for layer in model.encoder.layers] == [False, True,
                                                                                      True]
    manifold = [n for n, p in model.named_parameters() if isinstance(p, geoopt.ManifoldParameter)]
    assert manifold == ["decoder.cls"]
    assert not model.manifold.k.requires_grad
    assert hyperboloid_ok(model.decoder.cls.detach())


def test_nc_logits_are_negative_squared_distances_plus_bias():
    model = build("nc")
    with torch.no_grad():
        model.decoder.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    h = model(GRAPH.features, GRAPH.adj_norm).double()
    cls = model.decoder.cls.detach().double()
    d = geoopt.Lorentz(k=torch.tensor(1.0, dtype=torch.float64)).dist(h[:, None], cls[None])
    expected = -2 * (torch.cosh(d) - 1) + model.decoder.bias.double()
    torch.testing.assert_close(model.decoder(h.float()).double(), expected, rtol=1e-3, atol=1e-3)


def test_lp_scores_are_negative_squared_distances():
    model = build("lp")
    h = model(GRAPH.features, GRAPH.adj_norm)
    edges = GRAPH.val_edges
    inner = (-h[edges[:, 0], 0] * h[edges[:, 1], 0]
             + (h[edges[:, 0], 1:] * h[edges[:, 1], 1:]).sum(1))
    torch.testing.assert_close(model.decoder(h, edges), 2 + 2 * inner)
    assert (model.decoder(h, edges) <= 1e-4).all()


# --------------------------------------------------------------------------- losses
def test_hinge_loss_counts_every_class_including_the_true_one():
    gen = torch.Generator().manual_seed(0)
    z, y, m = torch.randn(20, 4, generator=gen), torch.randint(0, 4, (20,), generator=gen), 1.5
    correct = z[torch.arange(20), y]
    others = torch.relu(m - correct[:, None] + z)
    others[torch.arange(20), y] = 0
    expected = ((m + others.sum(1)) / 4).mean()
    torch.testing.assert_close(hinge_loss(z, y, m), expected)


def test_margin_loss_has_the_m_over_2_floor():
    gen = torch.Generator().manual_seed(0)
    pos, neg, m = -torch.rand(30, generator=gen), -torch.rand(30, generator=gen) * 3, 2.0
    expected = (m + torch.relu(m - pos + neg).mean()) / 2
    torch.testing.assert_close(margin_loss(pos, neg, m), expected)
    assert margin_loss(torch.zeros(5), torch.full((5,), -100.0), m) == pytest.approx(m / 2)
    with pytest.raises(ValueError, match="same shape"):
        margin_loss(pos, neg[:3], m)


def test_negative_sampling_is_hgcns_uniform_draw_with_replacement():
    pool = GRAPH.train_edges_false
    np.random.seed(1234)
    expected = pool[np.random.randint(0, len(pool), 100)]
    np.random.seed(1234)
    assert torch.equal(sample_negatives(pool, 100), expected)  # numpy's global RNG, like HGCN
    assert torch.equal(sample_negatives(pool, 100, np.random.RandomState(1234)), expected)
    draws = sample_negatives(pool[:4], 4000, np.random.default_rng(0))
    counts = torch.stack([(draws == row).all(1).sum() for row in pool[:4]])
    assert counts.sum() == 4000 and (counts > 900).all() and (counts < 1100).all()
    with pytest.raises(ValueError, match="empty"):
        sample_negatives(pool[:0], 3)


def test_lp_training_loss_uses_as_many_negatives_as_positives():
    model = build("lp")
    h = model(GRAPH.features, GRAPH.adj_norm)
    rng = np.random.RandomState(5)
    neg = sample_negatives(GRAPH.train_edges_false, len(GRAPH.train_edges),
                           np.random.RandomState(5))
    expected = margin_loss(model.decoder(h, GRAPH.train_edges), model.decoder(h, neg), 2.0)
    torch.testing.assert_close(model.loss(h, GRAPH, "train", rng), expected)
    val = margin_loss(model.decoder(h, GRAPH.val_edges), model.decoder(h, GRAPH.val_edges_false),
                      2.0)
    torch.testing.assert_close(model.loss(h, GRAPH, "val"), val)


def test_metrics_against_hand_counts():
    from sklearn.metrics import f1_score, roc_auc_score

    model = build("nc")
    h = model(GRAPH.features, GRAPH.adj_norm)
    out = model.metrics(h, GRAPH, "val")
    preds = model.decoder(h[GRAPH.idx_val]).argmax(1)
    assert out["acc"] == pytest.approx((preds == GRAPH.labels[GRAPH.idx_val]).float().mean().item())
    assert out["f1"] == pytest.approx(f1_score(GRAPH.labels[GRAPH.idx_val], preds,
                                               average="micro"))
    lp = build("lp")
    h = lp(GRAPH.features, GRAPH.adj_norm)
    pos, neg = lp.decoder(h, GRAPH.test_edges), lp.decoder(h, GRAPH.test_edges_false)
    auc = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))],
                        torch.cat([pos, neg]).detach().numpy())
    assert lp.metrics(h, GRAPH, "test")["roc"] == pytest.approx(auc)


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="task='gc'"):
        HyboNetGraphModel("gc", 5)
    with pytest.raises(ValueError, match="num_layers=1"):
        HyboNetGraphModel("lp", 5, num_layers=1)
    with pytest.raises(ValueError, match="num_classes=None"):
        HyboNetGraphModel("nc", 5)
    with pytest.raises(ValueError, match="act='tanh'"):
        HyboNetGraphModel("lp", 5, act="tanh")
    with pytest.raises(ValueError, match="split='dev'"):
        build("nc").loss(torch.zeros(48, DIM), GRAPH, "dev")
    with pytest.raises(ValueError, match="riemannian optimizer kind='sgd'"):
        build_hyperbolic_optimizer(build("lp"), make_method("full"), lr=0.01, riemannian="sgd")


# --------------------------------------------------------------------------- every method
@methods
def test_method_keeps_outputs_and_the_hyperboloid(name):
    reference = build("nc")
    x = (GRAPH.features, GRAPH.adj_norm)
    h0, logits0 = reference(*x), reference.decoder(reference(*x))
    model, method = prepared(name)
    h = model(*x)
    if name in KEEPS_INITIAL_OUTPUTS:
        torch.testing.assert_close(h, h0, rtol=0, atol=1e-5)
        # logits are -d^2 of size ~10: float32 rounding of the SVD shows at 1e-5 relative
        torch.testing.assert_close(model.decoder(h), logits0, rtol=1e-5, atol=1e-5)
    assert hyperboloid_ok(h)
    # every converted LorentzLinear maps random points (and off-manifold inputs) onto H
    gen = torch.Generator().manual_seed(1)
    for layer in [m for m in model.modules() if isinstance(m, LorentzLinear)]:
        u = torch.randn(32, layer.in_features, generator=gen)
        u[:, 0] = 0
        assert hyperboloid_ok(layer(expmap0(u)))
        assert hyperboloid_ok(layer(torch.randn(32, layer.in_features, generator=gen)))
    # the class prototypes are never replaced
    assert model.decoder.cls is not None and isinstance(model.decoder.cls, geoopt.ManifoldParameter)
    torch.testing.assert_close(model.decoder.cls.detach(), reference.decoder.cls.detach())


@methods
def test_method_optimizers_split_euclidean_and_manifold_parameters(name):
    model, method = prepared(name)
    opts = build_hyperbolic_optimizer(model, method, lr=0.01, weight_decay=1e-3)
    cls = model.decoder.cls
    held = {id(p): g for g in opts.method.param_groups for p in g["params"]}
    assert id(cls) not in held and cls.requires_grad
    assert [p for g in opts.riemannian.param_groups for p in g["params"]] == [cls]
    assert opts.riemannian.param_groups[0]["weight_decay"] == 0.0
    trainable = {id(p) for p in model.parameters() if p.requires_grad} - {id(cls)}
    assert set(held) == trainable
    # HyboNet's rule: decay every Euclidean parameter whose name has neither bias nor scale;
    # method factors (SST's spectral group) follow the method's own choice
    for pname, p in model.named_parameters():
        group = held.get(id(p))
        if group is None or group.get("name") not in ("decay", "no_decay", "galore"):
            continue
        hybonet_decays = "bias" not in pname and "scale" not in pname
        assert (group["weight_decay"] > 0) == hybonet_decays, pname
    # the method keeps its own optimizer: per-slot SlotAdamW for SST, GaLoreAdamW for GaLore
    expected = GaLoreAdamW if name == "galore" else SlotAdamW
    assert type(opts.method) is expected
    if name.startswith("sst"):
        assert any(g.get("name") == "spectral" and "slot_dims" in g
                   for g in opts.method.param_groups)


@methods
def test_method_trains_steps_with_prototypes_on_the_manifold(name):
    model, method = prepared(name)
    opts = build_hyperbolic_optimizer(model, method, lr=0.02)
    start = model.decoder.cls.detach().clone()
    for step in range(1, 5):
        loss = train_graph_step(model, GRAPH, opts, method, step, grad_clip=1.0)
        assert math.isfinite(loss)
    assert not torch.equal(model.decoder.cls.detach(), start)
    assert hyperboloid_ok(model.decoder.cls.detach())
    assert hyperboloid_ok(model(GRAPH.features, GRAPH.adj_norm))


def test_full_with_two_optimizers_equals_hybonets_single_riemannian_adam():
    """gcn/train.py: one RiemannianAdam, name-based groups; ours: SlotAdamW + Riemannian Adam.

    In float64: the two take the same steps in a different order of operations, and in
    float32 Adam's division by sqrt(v) amplifies the rounding of near-zero gradients to
    ~1e-6 (how much depends on the CPU's SIMD width); in float64 they agree to ~1e-15, while
    any real difference in the update (a group's weight decay, the stabilisation step) moves
    a weight by at least lr * wd = 2e-4 per step.
    """
    lr, wd = 0.02, 1e-2
    ours, method = prepared("full")
    theirs = build("nc")
    ours.double(), theirs.double()
    graph = dataclasses.replace(GRAPH, features=GRAPH.features.double(),
                                adj_norm=GRAPH.adj_norm.double())
    decay = [p for n, p in theirs.named_parameters() if p.requires_grad
             and "bias" not in n and "scale" not in n
             and not isinstance(p, geoopt.ManifoldParameter)]
    no_decay = [p for n, p in theirs.named_parameters() if p.requires_grad
                and all(p is not q for q in decay)]
    single = HyboNetRiemannianAdam([{"params": decay, "weight_decay": wd},
                                    {"params": no_decay, "weight_decay": 0.0}], lr=lr, stabilize=10)
    pair = build_hyperbolic_optimizer(ours, method, lr=lr, weight_decay=wd)
    for step in range(1, 13):  # past one stabilize
        for model, opt in ((theirs, single), (ours, pair)):
            opt.zero_grad()
            model.loss(model(graph.features, graph.adj_norm), graph, "train").backward()
            opt.step()
        for (n, a), b in zip(theirs.named_parameters(), ours.parameters()):
            assert a.dtype == b.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"{n} at step {step}")


def test_geoopt_riemannian_adam_is_selectable_and_state_round_trips():
    model, method = prepared("sst")
    opts = build_hyperbolic_optimizer(model, method, lr=0.01, riemannian="geoopt")
    assert type(opts.riemannian) is geoopt.optim.RiemannianAdam
    train_graph_step(model, GRAPH, opts, method, 1)
    state = opts.state_dict()
    fresh = build_hyperbolic_optimizer(model, method, lr=0.01, riemannian="geoopt")
    fresh.load_state_dict(state)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(fresh.riemannian.state[model.decoder.cls][key],
                                   opts.riemannian.state[model.decoder.cls][key])
    assert float(fresh.riemannian.state[model.decoder.cls]["step"]) == 1
    assert CombinedOptimizer(opts.method).optimizers == [opts.method]
    assert manifold_parameters(build("lp")) == []
    assert build_hyperbolic_optimizer(build("lp"), make_method("full"), lr=0.01).riemannian is None


# Training losses of 5 steps (lr 0.02, wd 1e-3, clip 1), measured with the two-optimizer
# GraphOptimizers and its requires_grad toggling before CombinedOptimizer replaced them (the
# parameters also matched bit for bit then; benchmarks/parity checks whole runs).
LOSSES_BEFORE_ONE_COMBINER = {
    "full": [2.3590826988220215, 2.0394179821014404, 1.940600872039795, 1.921357274055481,
             1.891894817352295],
    "lora": [2.3590826988220215, 2.184420585632324, 2.040508508682251, 1.96897554397583,
             1.9240392446517944],
    "relora": [2.3590826988220215, 2.184420585632324, 2.040508508682251, 2.1731812953948975,
               2.015192747116089],
    "galore": [2.3590826988220215, 2.019231081008911, 1.979838252067566, 1.925641417503357,
               1.8925451040267944],
    "sst": [2.3590822219848633, 2.067882776260376, 1.9642306566238403, 1.8842495679855347,
            1.8643169403076172],
}


@pytest.mark.parametrize("name", sorted(LOSSES_BEFORE_ONE_COMBINER))
def test_one_combiner_trains_as_the_two_optimizers_did(name):
    model, method = prepared(name)
    opts = build_hyperbolic_optimizer(model, method, lr=0.02, weight_decay=1e-3)
    assert isinstance(opts, CombinedOptimizer) and opts.optimizers == [opts.method,
                                                                       opts.riemannian]
    losses = [train_graph_step(model, GRAPH, opts, method, s, grad_clip=1.0) for s in range(1, 6)]
    assert losses == pytest.approx(LOSSES_BEFORE_ONE_COMBINER[name], rel=1e-6, abs=0)


@pytest.mark.parametrize("name", ["sst", "relora"])
def test_after_step_given_the_combiner_equals_given_the_methods_member(name):
    """SST's slot resets and ReLoRA's full resets reach the method's member through the view."""
    runs = []
    for whole in (True, False):
        model, method = prepared(name)
        opts = build_hyperbolic_optimizer(model, method, lr=0.02)
        for step in range(1, 7):  # past three selection changes / merges
            opts.zero_grad()
            model.loss(model(GRAPH.features, GRAPH.adj_norm), GRAPH, "train").backward()
            opts.step()
            method.after_step(step, opts if whole else opts.method)
        runs.append((model, opts))
    (a, opt_a), (b, opt_b) = runs
    for (pname, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), pname
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        for key, value in opt_a.state.get(p, {}).items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b.state[q][key]))


def test_combiner_state_round_trip_resumes_exactly():
    def fresh():
        model, method = prepared("sst")
        return model, method, build_hyperbolic_optimizer(model, method, lr=0.02)

    def train(model, method, opts, steps):
        return [train_graph_step(model, GRAPH, opts, method, s, grad_clip=1.0) for s in steps]

    model, method, opts = fresh()
    straight = train(model, method, opts, range(1, 13))  # crosses the re-projection at 10
    model, method, opts = fresh()
    train(model, method, opts, range(1, 7))
    saved = (model.state_dict(), method.state_dict(), opts.state_dict())
    assert sorted(saved[2]) == ["optimizers"] and len(saved[2]["optimizers"]) == 2
    model, method, opts = fresh()
    model.load_state_dict(saved[0])
    method.load_state_dict(saved[1])
    opts.load_state_dict(saved[2])
    assert train(model, method, opts, range(7, 13)) == straight[6:]


def test_a_method_ignoring_exclude_is_caught():
    from sparse_spectral.methods import FullRank

    class Greedy(FullRank):
        def param_groups(self, model, weight_decay=0.0, exclude=()):
            return super().param_groups(model, weight_decay)

    model = build("nc")
    with pytest.raises(RuntimeError, match="Greedy.build_optimizer took a manifold parameter"):
        build_hyperbolic_optimizer(model, Greedy(), lr=0.01)
    assert model.decoder.cls.requires_grad  # nothing was frozen on the way


@pytest.mark.parametrize("name", ["full", "sst"])
def test_training_reduces_the_nc_loss(name):
    model, method = prepared(name)
    opts = build_hyperbolic_optimizer(model, method, lr=0.01)
    losses = [train_graph_step(model, GRAPH, opts, method, step) for step in range(1, 41)]
    model.eval()
    final = model.loss(model(GRAPH.features, GRAPH.adj_norm), GRAPH, "train").item()
    assert final < 0.8 * losses[0], (losses[0], final)


def test_training_reduces_the_lp_loss():
    model, method = prepared("full", "lp", num_layers=2)
    opts = build_hyperbolic_optimizer(model, method, lr=0.01)

    def train_loss() -> float:  # the same sampled negatives before and after
        model.eval()
        h = model(GRAPH.features, GRAPH.adj_norm)
        return model.loss(h, GRAPH, "train", np.random.RandomState(7)).item()

    before = train_loss()
    rng = np.random.RandomState(0)
    for step in range(1, 41):
        train_graph_step(model, GRAPH, opts, method, step, rng=rng)
    after = train_loss()
    assert after < 0.8 * before, (before, after)
