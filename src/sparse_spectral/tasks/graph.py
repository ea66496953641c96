"""Hyperbolic graph models (HyboNet) trained with any method: NC and LP, full batch.

``run_train`` trains one method with one seed and writes a run folder::

    <output_dir>/metrics.jsonl   one JSON line per epoch (train loss, val metrics)
    <output_dir>/summary.json    best-val epoch, its val and test metrics, sizes, timings

``run_compare`` trains several methods over several seeds on the same data and writes
``results.json``, ``report.md`` and the plots (:mod:`sparse_spectral.report_graph`).

The loop is HyboNet's ``gcn/train.py`` (reference/hybonet.md section 2.8): every epoch one
full-batch step (encode all nodes, loss on the train split, clip, step), then the learning
rate scheduler (``StepLR(step_size=lr_reduce_freq or epochs, gamma)``: constant in practice),
then an evaluation on the validation split. A strictly better validation score (F1 for NC,
``(ROC + AP) / 2`` for LP) computes the test metrics at that epoch; training stops once
``patience`` evaluations passed without improvement and ``epoch > min_epochs``. Reported:
the best validation metrics and the test metrics of that epoch.

Seeds: ``seed`` seeds torch (initialisation, dropout) and numpy's global RNG; the split uses
``split_seed`` (1234 in every HyboNet script), and LP training negatives are drawn from a
copy of ``GraphData.rng``, the numpy stream HGCN samples them from (HGCN re-seeds numpy with
``split_seed`` while splitting, so its negatives do not depend on ``--seed``).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..accounting import count_parameters, memory_report
from .._util.atomic import atomic_write_json
from ..methods import make_method
from ..training.loggers import JsonlLogger
from ..training.loop import TrainingDiverged

#: HyboNet's per-data-set settings (``gcn/run.*.sh``, reference/hybonet.md section 2.9).
#: Disease NC and CiteSeer have no official script; they take the Disease LP / Cora values
#: closest to them (Disease NC: its script exists but its features do not; see the notes).
HYBONET_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("airport", "lp"): dict(lr=0.01, num_layers=2, act="none", dropout=0.0, weight_decay=0.0,
                            margin=2.0, grad_clip=0.0),
    ("airport", "nc"): dict(lr=0.02, num_layers=6, act="relu", dropout=0.0, weight_decay=1e-4,
                            margin=2.0, grad_clip=1.0),
    ("cora", "lp"): dict(lr=0.02, num_layers=2, act="none", dropout=0.7, weight_decay=1e-3,
                         margin=0.1, grad_clip=0.5),
    ("cora", "nc"): dict(lr=0.02, num_layers=3, act="none", dropout=0.9, weight_decay=1e-2,
                         margin=1.0, grad_clip=1.0),
    ("disease", "lp"): dict(lr=0.005, num_layers=2, act="none", dropout=0.0, weight_decay=0.0,
                            margin=30.0, grad_clip=0.5),
    ("disease", "nc"): dict(lr=0.005, num_layers=4, act="none", dropout=0.1, weight_decay=0.0,
                            margin=2.0, grad_clip=0.5),
}
# CiteSeer has no HyboNet script: it uses Cora's settings.
HYBONET_DEFAULTS[("citeseer", "nc")] = dict(HYBONET_DEFAULTS[("cora", "nc")])
HYBONET_DEFAULTS[("citeseer", "lp")] = dict(HYBONET_DEFAULTS[("cora", "lp")])
_TUNED = ("lr", "num_layers", "act", "dropout", "weight_decay", "margin", "grad_clip")

#: Steps between subspace refreshes of SST, ReLoRA* and GaLore (SST's default T3).
DEFAULT_T3 = 50

#: The validation score that selects the epoch, and the metrics reported, per task.
SELECTION = {"nc": "f1", "lp": "roc+ap"}
REPORTED = {"nc": ("acc", "f1"), "lp": ("roc", "ap")}
#: The single test figure of a run where one number is needed (the ablation table).
HEADLINE_METRIC = {"nc": "f1", "lp": "roc"}


@dataclass
class GraphSettings:
    """Everything that defines a graph run (CLI flags map 1:1 onto these).

    Fields left at ``None`` in the "HyboNet per data set" group take the value of
    :data:`HYBONET_DEFAULTS` for ``(dataset, task)``; :meth:`resolved` fills them in.
    ``grad_clip = 0`` means no clipping; ``act = "none"`` means no activation.
    """

    # data
    dataset: str = "cora"
    task: str = "nc"
    data_dir: str | None = None
    split: str = "corrected"
    split_seed: int = 1234
    # model
    dim: int = 16
    bias: bool = True
    k: float = 1.0
    # HyboNet per data set (None: HYBONET_DEFAULTS)
    lr: float | None = None
    num_layers: int | None = None
    act: str | None = None
    dropout: float | None = None
    weight_decay: float | None = None
    margin: float | None = None
    grad_clip: float | None = None
    # method
    method: str = "sst"
    rank: int = 2
    method_options: dict[str, Any] = field(default_factory=dict)
    riemannian: str = "hybonet"
    # schedule and early stopping (HyboNet's defaults)
    epochs: int = 5000
    min_epochs: int = 100
    patience: int = 500
    eval_freq: int = 1
    lr_reduce_freq: int | None = None
    gamma: float = 0.5
    seed: int = 1234
    # output
    output_dir: str = "runs/graph"
    save_embeddings: bool = True

    def __post_init__(self):
        from ..data.graphs import GRAPH_DATASETS, GRAPH_TASKS, SPLITS

        for kind, value, allowed in (("dataset", self.dataset, GRAPH_DATASETS),
                                     ("task", self.task, GRAPH_TASKS),
                                     ("split", self.split, SPLITS)):
            if value not in allowed:
                raise ValueError(f"{kind}={value!r} is unknown; allowed: {', '.join(allowed)}")
        for name in ("epochs", "eval_freq", "dim", "rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        for name in ("min_epochs", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.act is not None and self.act not in ("none", "relu"):
            raise ValueError(f"act={self.act!r} is unknown; allowed: none, relu")

    def resolved(self) -> "GraphSettings":
        """A copy with every ``None`` HyboNet setting replaced by its per-data-set value."""
        defaults = HYBONET_DEFAULTS[(self.dataset, self.task)]
        filled = {name: defaults[name] for name in _TUNED if getattr(self, name) is None}
        return dataclasses.replace(self, **filled)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "GraphSettings":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**values)


# ---------------------------------------------------------------------- data, model, method
def load_data(settings: GraphSettings):
    """The :class:`~sparse_spectral.data.graphs.GraphData` of ``settings``."""
    from ..data.graphs import load_graph

    return load_graph(settings.dataset, settings.task, data_dir=settings.data_dir,
                      split=settings.split, seed=settings.split_seed)


def method_settings(settings: GraphSettings) -> dict[str, Any]:
    """The method's config: rank, seed, its options, and HyboNet's target layers.

    Every method refreshes its subspace every ``iteration_interval`` steps (SST's T3,
    default :data:`DEFAULT_T3`): ReLoRA*'s merge interval and GaLore's projection gap follow
    it unless set themselves.
    """
    from ..models.hybonet import HYBONET_TARGETS
    from .lm import method_settings as lm_method_settings

    options = {"iteration_interval": DEFAULT_T3, **settings.method_options}
    # The LM helper reads only method, method_options, rank and seed.
    chosen = lm_method_settings(dataclasses.replace(settings, method_options=options))
    return {**chosen, "target_modules": HYBONET_TARGETS}


def _check_rank(model: torch.nn.Module, settings: GraphSettings) -> None:
    """Refuse a rank above the smallest target layer, naming the layer and the bound."""
    from ..methods.base import method_config_fields
    from ..models.hybonet import HYBONET_TARGETS
    from ..targeting import find_target_modules

    if "rank" not in method_config_fields(settings.method):
        return
    for name, module in find_target_modules(model, HYBONET_TARGETS):
        out_f, in_f = module.weight.shape
        if settings.rank > min(out_f, in_f):
            raise ValueError(
                f"rank={settings.rank} is larger than layer {name!r} ({out_f} x {in_f}) of "
                f"{settings.dataset} {settings.task.upper()} at dim {settings.dim}: the rank "
                f"must be in [1, {min(out_f, in_f)}]")


def build_model_and_method(settings: GraphSettings, data):
    """HyboNet's model for ``data`` (seeded), converted by the method."""
    from ..models.hybonet import HyboNetGraphModel

    s = settings.resolved()
    torch.manual_seed(s.seed)
    model = HyboNetGraphModel(
        s.task, data.num_features, data.num_classes if s.task == "nc" else None, dim=s.dim,
        num_layers=s.num_layers, dropout=s.dropout, act=s.act, bias=s.bias, margin=s.margin,
        k=s.k)
    _check_rank(model, s)
    method = make_method(s.method, **method_settings(s))
    return method.prepare(model), method


def selection_score(task: str, metrics: dict[str, float]) -> float:
    """HGCN's ``has_improved`` quantity: F1 (NC) or ``(ROC + AP) / 2`` (LP)."""
    return metrics["f1"] if task == "nc" else 0.5 * (metrics["roc"] + metrics["ap"])


# ---------------------------------------------------------------------- one run
@dataclass
class GraphRun:
    """What one training run leaves in memory besides its summary."""

    summary: dict[str, Any]
    model: torch.nn.Module
    method: Any
    embeddings: torch.Tensor  # (N, dim) points on the hyperboloid at the best-val epoch


def run_train(settings: GraphSettings, data=None, progress: bool = True) -> dict[str, Any]:
    """Train one method with one seed; write ``metrics.jsonl`` and ``summary.json``."""
    return train_once(settings, data, progress).summary


def train_once(settings: GraphSettings, data=None, progress: bool = True) -> GraphRun:
    """:func:`run_train`, also returning the model, method and best embeddings."""
    from ..hyperbolic import build_graph_optimizers
    from ..models.hybonet import train_graph_step

    s = settings.resolved()
    data = data if data is not None else load_data(s)
    np.random.seed(s.seed)
    model, method = build_model_and_method(s, data)
    optimizers = build_graph_optimizers(model, method, lr=s.lr, weight_decay=s.weight_decay,
                                        riemannian=s.riemannian)
    reduce_every = s.lr_reduce_freq or s.epochs
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=reduce_every, gamma=s.gamma)
                  for o in optimizers.optimizers]
    rng = copy.deepcopy(data.rng)  # HGCN's negative-sampling stream, fresh for every run
    trainable, total = count_parameters(model)
    run_dir = Path(s.output_dir)
    logger = JsonlLogger(run_dir / "metrics.jsonl")
    grad_clip = s.grad_clip if s.grad_clip and s.grad_clip > 0 else None

    best_score, best_epoch, best_val, best_test = -np.inf, 0, None, None
    best_h, since_best, curve, step_times = None, 0, [], []
    began = time.perf_counter()
    epoch = 0
    try:
        for epoch in range(1, s.epochs + 1):
            tick = time.perf_counter()
            stats: dict[str, float] = {}
            loss = train_graph_step(model, data, optimizers, method, epoch, grad_clip, rng,
                                    stats)
            for scheduler in schedulers:
                scheduler.step()
            step_times.append(time.perf_counter() - tick)
            if not np.isfinite(loss):
                raise TrainingDiverged(f"training loss is {loss} at epoch {epoch} "
                                         f"({s.method}, lr {s.lr})")
            if epoch % s.eval_freq:
                continue
            model.eval()
            with torch.no_grad():
                h = model(data.features, data.adj_norm)
            val = model.metrics(h, data, "val")
            score = selection_score(s.task, val)
            point = {"epoch": epoch, "train_loss": loss, "grad_norm": stats["grad_norm"],
                     **{f"val_{k}": v for k, v in val.items()}, "val_score": score}
            curve.append(point)
            logger.log_dict(point, epoch)
            if score > best_score:  # strict, as HGCN
                best_score, best_epoch, best_val = score, epoch, val
                best_test = model.metrics(h, data, "test")
                best_h, since_best = h.detach().clone(), 0
            else:
                since_best += 1
                if since_best >= s.patience and epoch > s.min_epochs:
                    break
            if progress and epoch % 100 == 0:
                print(f"[{s.method} seed {s.seed}] epoch {epoch}: loss {loss:.4f}, val score "
                      f"{score:.4f} (best {best_score:.4f} at {best_epoch})", flush=True)
    finally:
        logger.close()
    memory = memory_report(model, optimizers.method)
    summary = {
        "method": s.method, "seed": s.seed, "settings": asdict(s),
        "trainable_params": trainable, "total_params": total,
        "grad_optimizer_bytes": memory.gradients + memory.optimizer_state,
        "step_time_s": statistics.median(step_times) if step_times else 0.0,
        "wall_time_s": time.perf_counter() - began, "epochs_run": epoch,
        "best_epoch": best_epoch, "best_val_score": best_score,
        "val": best_val, "test": best_test, "curve": curve,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    if s.save_embeddings and best_h is not None:
        from .._util.atomic import atomic_write

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, best_h.numpy())

        atomic_write(run_dir / "embeddings.npy", write)
    return GraphRun(summary, model, method, best_h)


# ---------------------------------------------------------------------- comparison
def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate_runs(runs: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """Mean and sample std over seeds of the best-val and test metrics of ``runs``."""
    keys = REPORTED[task]
    out = {f"val_{k}": _mean_std([r["val"][k] for r in runs]) for k in keys}
    out.update({f"test_{k}": _mean_std([r["test"][k] for r in runs]) for k in keys})
    out["best_epoch"] = _mean_std([float(r["best_epoch"]) for r in runs])
    return out


def run_compare(settings: GraphSettings, methods: list[str], seeds: list[int],
                method_lr: dict[str, float] | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train each method with each seed on the same data; write results, report, plots."""
    from ..report import render

    method_lr = method_lr or {}
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    base = settings.resolved()
    out = Path(base.output_dir)
    data = load_data(base)
    results: dict[str, Any] = {
        "task": "graph",
        "title": f"HyboNet {base.dataset} {base.task.upper()}, dim {base.dim}, rank "
                 f"{base.rank}, {len(seeds)} seed(s), split {base.split}",
        "settings": {**asdict(base), "methods": methods, "seeds": seeds,
                     "method_lr": method_lr, "threads": torch.get_num_threads()},
        "notes": list(data.notes),
        "methods": {},
    }
    for name in methods:
        runs = []
        for seed in seeds:
            run_settings = dataclasses.replace(
                base, method=name, seed=seed, lr=method_lr.get(name, base.lr),
                output_dir=str(out / name / f"seed{seed}"))
            if progress:
                print(f"== {name} seed {seed} (lr {run_settings.lr:g}) ==", flush=True)
            run = train_once(run_settings, data, progress)
            summary = dict(run.summary)
            summary.pop("settings")
            if seed == seeds[0]:
                summary["embedding_2d"] = poincare_projection(run.embeddings, base.k)
            runs.append(summary)
        first = runs[0]
        results["methods"][name] = {
            "lr": method_lr.get(name, base.lr),
            "trainable_params": first["trainable_params"], "total_params": first["total_params"],
            "grad_optimizer_bytes": first["grad_optimizer_bytes"],
            "step_time_s": statistics.median(r["step_time_s"] for r in runs),
            **aggregate_runs(runs, base.task), "runs": runs,
        }
        if base.task == "nc":
            results["labels"] = data.labels.tolist()
        atomic_write_json(out / "results.json", results)  # partial results survive a crash
    render(out)
    return results


def poincare_projection(points: torch.Tensor | None, k: float = 1.0) -> list[list[float]] | None:
    """Hyperboloid points to the Poincare ball, then to 2-D without leaving the unit disk.

    ``x -> sqrt(k) x_s / (sqrt(k) + x_0)`` maps the hyperboloid ``<x, x>_L = -k`` onto the
    ball of radius ``sqrt(k)``; dividing by ``sqrt(k)`` gives the unit ball. For more than two
    space dimensions the points are projected orthogonally onto the top two right singular
    vectors of the (uncentred) ball coordinates: an orthogonal projection never increases a
    norm, so the view stays in the disk.

    Args:
        points: (N, d) hyperboloid points, or None.
        k: curvature parameter.

    Returns:
        (N, 2) nested list, or None.
    """
    if points is None:
        return None
    x = points.detach().double()
    root = float(np.sqrt(k))
    ball = x[:, 1:] / (root + x[:, :1])  # unit ball: sqrt(k) x_s / (sqrt(k) + x0) / sqrt(k)
    if ball.shape[1] > 2:
        _, _, vh = torch.linalg.svd(ball, full_matrices=False)
        ball = ball @ vh[:2].T
    return ball.float().tolist()
