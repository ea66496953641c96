"""Hyperbolic graph models (HyboNet) trained with any method: NC and LP, full batch.

The ``graph`` task (:data:`GRAPH`) runs through the one loop; a run folder holds
``metrics.jsonl`` (train and validation lines per epoch), ``checkpoints/`` (``--resume``
works as for every task), ``summary.json`` (best-val epoch, its val and test metrics) and
``embeddings.npy``.

The schedule is HyboNet's ``gcn/train.py`` (reference/hybonet.md section 2.8): every epoch
one full-batch step (encode all nodes, loss on the train split, clip, step), the learning
rate ``gamma ** (epoch // lr_reduce_freq)`` (``StepLR``; constant by default), then an
evaluation on the validation split. A strictly better validation score (F1 for NC,
``(ROC + AP) / 2`` for LP) computes the test metrics at that epoch; training stops once
``patience`` evaluations passed without improvement and ``epoch > min_epochs``. Reported:
the best validation metrics and the test metrics of that epoch.

Seeds: ``seed`` seeds torch (initialisation, dropout); the split uses
``split_seed`` (1234 in every HyboNet script), and LP training negatives are drawn from a
copy of ``GraphData.rng``, the numpy stream HGCN samples them from (HGCN re-seeds numpy with
``split_seed`` while splitting, so its negatives do not depend on ``--seed``).

Under DDP every rank encodes the whole graph (full-batch training has no rows to split) and
takes a contiguous part of the loss's training nodes or pairs (:class:`GraphShare`): the
run equals one process to rounding, but each rank does the whole forward and backward, so
more processes do not make a step faster. FSDP2 is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util.fields import Checked
from ..training.config import (
    MethodChoice,
    OptimSettings,
    OutputSettings,
    TaskSettings,
    _help,
    check_seed,
)
from .base import Batches, Headline, TaskBase

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
_MODEL_TUNED = ("num_layers", "act", "dropout", "margin")
_OPTIM_TUNED = ("lr", "weight_decay", "grad_clip")

#: Steps between subspace refreshes of SST, ReLoRA* and GaLore (SST's default T3).
DEFAULT_T3 = 50

#: The validation score that selects the epoch, and the metrics reported, per task.
SELECTION = {"nc": "f1", "lp": "roc+ap"}
REPORTED = {"nc": ("acc", "f1"), "lp": ("roc", "ap")}
#: The single test figure of a run where one number is needed (the ablation table).
HEADLINE_METRIC = {"nc": "f1", "lp": "roc"}


@dataclass
class GraphSchedule(Checked):
    """HyboNet's epochs, early stopping and step decay (one full-batch step per epoch)."""

    epochs: int = field(default=5000, metadata=_help("training epochs (one step each)"))
    min_epochs: int = field(default=100, metadata=_help("never stop early before this epoch"))
    patience: int = field(default=500, metadata=_help(
        "stop after this many evaluations without a better validation score"))
    lr_reduce_freq: int | None = field(default=None, metadata=_help(
        "epochs between learning-rate decays by gamma (default: never)"))
    gamma: float = field(default=0.5, metadata=_help("learning-rate decay factor"))

    def validate(self):
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs!r} must be an int >= 1")
        for name in ("min_epochs", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.lr_reduce_freq is not None and self.lr_reduce_freq < 1:
            raise ValueError(f"lr_reduce_freq={self.lr_reduce_freq!r} must be None or >= 1")
        if not self.gamma > 0:
            raise ValueError(f"gamma={self.gamma!r} must be > 0")


@dataclass
class GraphEval(Checked):
    """Evaluation on the validation split every ``eval_freq`` epochs (HGCN's name)."""

    eval_every: int = field(default=1, metadata=_help("epochs between evaluations",
                                                      flag="eval_freq"))

    def validate(self):
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) \
                or self.eval_every < 1:
            raise ValueError(f"eval_freq={self.eval_every!r} must be an int >= 1")


_HYBONET = "(default: HyboNet's value for the data set)"


@dataclass
class GraphSettings(TaskSettings):
    """Everything that defines a graph run (one flag per field).

    Fields left at ``None`` that :data:`HYBONET_DEFAULTS` sets per ``(dataset, task)`` (the
    model's ``num_layers``, ``act``, ``dropout``, ``margin`` and the optimizer's ``lr``,
    ``weight_decay``, ``grad_clip``) take its value; :meth:`resolved` fills them in.
    ``grad_clip = 0`` means no clipping; ``act = "none"`` means no activation.
    """

    # data
    dataset: str = field(default="cora", metadata=_help("cora, citeseer, airport or disease"))
    task: str = field(default="nc", metadata=_help("nc (node classification) or lp (links)"))
    data_dir: str | None = field(default=None, metadata=_help(
        "data directory (default $SST_DATA_DIR)"))
    split: str = field(default="corrected", metadata=_help(
        "corrected or hgcn (HGCN/HyboNet's split, quirks kept)"))
    split_seed: int = field(default=1234, metadata=_help("seed of the split (HyboNet's 1234)"))
    # model
    dim: int = field(default=16, metadata=_help("hyperboloid dimension of the embeddings"))
    bias: bool = field(default=True, metadata=_help("LorentzLinear and class biases"))
    k: float = field(default=1.0, metadata=_help("curvature parameter"))
    num_layers: int | None = field(default=None, metadata=_help(f"layers {_HYBONET}"))
    act: str | None = field(default=None, metadata=_help(f"none or relu {_HYBONET}"))
    dropout: float | None = field(default=None, metadata=_help(f"dropout {_HYBONET}"))
    margin: float | None = field(default=None, metadata=_help(f"loss margin {_HYBONET}"))
    riemannian: str = field(default="hybonet", metadata=_help(
        "Riemannian Adam of the manifold parameters: hybonet or geoopt"))
    save_embeddings: bool = field(default=True, metadata=_help(
        "write the best-validation embeddings to embeddings.npy"))
    seed: int = field(default=1234, metadata=_help("seed of initialisation and dropout"))
    method: MethodChoice = field(default_factory=lambda: MethodChoice(rank=2,
                                                                      interval=DEFAULT_T3))
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(
        lr=None, weight_decay=None, grad_clip=None))
    schedule: GraphSchedule = field(default_factory=GraphSchedule)
    eval: GraphEval = field(default_factory=GraphEval)
    output: OutputSettings = field(default_factory=lambda: OutputSettings(output_dir="runs/graph"))

    DEFAULT_NOTES: typing.ClassVar[dict[str, str]] = {
        name: "HyboNet's value for the data set" for name in ("lr", "weight_decay", "grad_clip")}

    def validate(self):
        super().validate()
        from ..data.graphs import GRAPH_DATASETS, GRAPH_TASKS, SPLITS

        for kind, value, allowed in (("dataset", self.dataset, GRAPH_DATASETS),
                                     ("task", self.task, GRAPH_TASKS),
                                     ("split", self.split, SPLITS)):
            if value not in allowed:
                raise ValueError(f"{kind}={value!r} is unknown; allowed: {', '.join(allowed)}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim={self.dim!r} must be an int >= 1")
        if self.act is not None and self.act not in ("none", "relu"):
            raise ValueError(f"act={self.act!r} is unknown; allowed: none, relu")
        check_seed("split_seed", self.split_seed)
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers!r} must be None or an int >= 1")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be None or in [0, 1)")
        if not self.k > 0:
            raise ValueError(f"k={self.k!r} must be > 0 (the curvature parameter)")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin={self.margin!r} must be None or >= 0")

    def resolved(self) -> GraphSettings:
        """A copy with every ``None`` HyboNet setting replaced by its per-data-set value."""
        defaults = HYBONET_DEFAULTS[(self.dataset, self.task)]
        own = {n: defaults[n] for n in _MODEL_TUNED if getattr(self, n) is None}
        optim = {n: defaults[n] for n in _OPTIM_TUNED if getattr(self.optim, n) is None}
        return dataclasses.replace(self, **own,
                                   optim=dataclasses.replace(self.optim, **optim))


# ---------------------------------------------------------------------- data, model, method
def load_data(settings: GraphSettings):
    """The :class:`~sparse_spectral.data.graphs.GraphData` of ``settings``."""
    from ..data.graphs import load_graph

    return load_graph(settings.dataset, settings.task, data_dir=settings.data_dir,
                      split=settings.split, seed=settings.split_seed)


def _check_rank(model: torch.nn.Module, settings: GraphSettings) -> None:
    """Refuse a rank above the smallest target layer, naming the layer and the bound."""
    from ..methods.base import method_config_fields
    from ..models.hybonet import HYBONET_TARGETS
    from ..targeting import find_target_modules

    if "rank" not in method_config_fields(settings.method.name):
        return
    for name, module in find_target_modules(model, HYBONET_TARGETS):
        out_f, in_f = module.weight.shape
        if settings.method.rank > min(out_f, in_f):
            raise ValueError(
                f"rank={settings.method.rank} is larger than layer {name!r} ({out_f} x {in_f}) of "
                f"{settings.dataset} {settings.task.upper()} at dim {settings.dim}: the rank "
                f"must be in [1, {min(out_f, in_f)}]")


def selection_score(task: str, metrics: dict[str, float]) -> float:
    """HGCN's ``has_improved`` quantity: F1 (NC) or ``(ROC + AP) / 2`` (LP)."""
    return metrics["f1"] if task == "nc" else 0.5 * (metrics["roc"] + metrics["ap"])


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


# ---------------------------------------------------------------------- early stopping
class EarlyStopping:
    """HGCN's model selection as the loop's evaluation hook.

    Called as the loop's ``eval_fn`` (in eval mode, no grad): encodes every node, scores the
    validation split and, on a strictly better score, the test split at that epoch (and keeps
    the embeddings). :meth:`after_eval` then says whether to stop: ``patience`` evaluations
    without improvement once past ``min_epochs``. Its state is checkpointed with the run.
    """

    def __init__(self, settings: GraphSettings, data):
        self.task, self.data = settings.task, data
        self.patience, self.min_epochs = settings.schedule.patience, settings.schedule.min_epochs
        self.best_score, self.best_epoch, self.since_best = -np.inf, 0, 0
        self.best_val: dict | None = None
        self.best_test: dict | None = None
        self.best_h: torch.Tensor | None = None
        self.curve: list[dict[str, float]] = []
        self._pending: tuple | None = None

    def __call__(self, model) -> dict[str, float]:
        h = model(self.data.features, self.data.adj_norm)
        val = model.metrics(h, self.data, "val")
        score = selection_score(self.task, val)
        test = model.metrics(h, self.data, "test") if score > self.best_score else None
        self._pending = (val, score, test, h)
        return {**{f"val_{k}": v for k, v in val.items()}, "val_score": score}

    def after_eval(self, step: int, metrics: dict[str, float], train: dict[str, float]) -> bool:
        """Record the evaluation of ``step``; True when training should stop."""
        val, score, test, h = self._pending
        self.curve.append({"epoch": step, "train_loss": train["train_loss"],
                           "grad_norm": train["grad_norm"], **metrics})
        if score > self.best_score:  # strict, as HGCN
            self.best_score, self.best_epoch, self.best_val, self.best_test = \
                score, step, val, test
            self.best_h, self.since_best = h.detach().clone(), 0
            return False
        self.since_best += 1
        return self.since_best >= self.patience and step > self.min_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": float(self.best_score), "best_epoch": self.best_epoch,
                "since_best": self.since_best, "best_val": self.best_val,
                "best_test": self.best_test, "best_h": self.best_h, "curve": self.curve}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.since_best, self.best_val = state["since_best"], state["best_val"]
        self.best_test, self.best_h = state["best_test"], state["best_h"]
        self.curve = list(state["curve"])


class NegativeSampler:
    """HGCN's numpy stream for LP training negatives, with a checkpointable state."""

    def __init__(self, rng: np.random.RandomState | None):
        self.rng = copy.deepcopy(rng)  # a fresh copy for every run

    def state_dict(self) -> dict[str, Any]:
        if self.rng is None:
            return {}
        state = self.rng.get_state(legacy=False)
        return {"key": torch.from_numpy(state["state"]["key"].astype(np.int64)),
                "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]),
                "gauss": float(state["gauss"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.rng is not None:
            self.rng.set_state({"bit_generator": "MT19937",
                                "state": {"key": state["key"].numpy().astype(np.uint32),
                                          "pos": state["pos"]},
                                "has_gauss": state["has_gauss"], "gauss": state["gauss"]})


@dataclass(frozen=True)
class GraphShare:
    """A DDP rank's part of a full-batch step: part ``index`` of ``count`` of the loss's
    training nodes (NC) or pairs (LP), drawn negatives included.

    Every rank encodes the whole graph (the same forward, dropout masks included: the
    ranks' torch generators agree) and draws the same negatives from the same stream, so
    the parts are cut from one and the same set of terms.
    """

    sampler: NegativeSampler
    index: int
    count: int


# ---------------------------------------------------------------------- the task
class GraphTask(TaskBase):
    """``sst train|compare|ablate graph``: HyboNet NC and LP, full batch, early stopping.

    One full-batch step per epoch through the one loop: the batch is constant (features and
    adjacency), the loss draws LP negatives from :class:`NegativeSampler`, the learning rate
    is HyboNet's step decay times the method's restart factor, and :class:`EarlyStopping` is
    the evaluation hook.
    """

    name = "graph"
    description = "hyperbolic graph models (HyboNet): node classification, link prediction"
    settings_class = GraphSettings

    def headline(self, settings: GraphSettings) -> Headline:
        metric = HEADLINE_METRIC[settings.task]
        label = {"f1": "test F1", "roc": "test ROC-AUC"}[metric]
        return Headline(f"test_{metric}", label, higher_is_better=True)

    def resolve(self, settings: GraphSettings) -> GraphSettings:
        return settings.resolved()

    def check(self, settings: GraphSettings) -> None:
        if settings.runtime.parallel == "fsdp2":
            # Sharding buys nothing here (every rank encodes the whole graph), and the
            # Riemannian Adam and the sparse products have not been run on DTensor shards.
            raise ValueError("parallel='fsdp2' is not supported by the graph task (full-batch "
                             "training of a small model; the manifold parameters' optimizer "
                             "is untested on shards); allowed: auto, ddp")
        if settings.runtime.compile:
            # HyboNet runs on sparse COO/CSR tensors (sparse_rows.SparseRows, whose use
            # depends on the data's density) and keeps its CSR operands on the module keyed
            # by tensor versions: dynamo cannot trace either (data-dependent sizes, sparse
            # layouts), so compiling would mean a different model, not a faster one.
            raise ValueError("compile=true is not supported by the graph task: HyboNet's "
                             "sparse CSR products (sparse_rows.py) cannot be traced by "
                             "torch.compile; allowed: compile=false")
        if settings.runtime.precision == "bf16":
            # The features and adjacency are CSR products, which torch does not run in bf16
            # on the CPU; bf16-mixed keeps them in fp32 and runs the dense maps in bf16.
            raise ValueError("precision='bf16' is not supported by the graph task (no bf16 "
                             "sparse product); allowed: fp32, bf16-mixed")
        if settings.runtime.precision == "fp16-mixed":
            # Measured on Disease LP (full rank and SST alike): every step's gradients hold
            # NaNs in float16 whatever the loss scale (the scaler halved it to 6e-8 and
            # skipped all 40 epochs): the Lorentz maps leave float16's range.
            raise ValueError("precision='fp16-mixed' is not supported by the graph task (the "
                             "Lorentz maps give NaN gradients in float16 at any loss scale); "
                             "allowed: fp32, bf16-mixed")

    def prepare_data(self, settings: GraphSettings):
        return load_data(settings)

    def build_model(self, settings: GraphSettings, data):
        from ..models.hybonet import HyboNetGraphModel

        s = settings.resolved()
        torch.manual_seed(s.seed)
        model = HyboNetGraphModel(
            s.task, data.num_features, data.num_classes if s.task == "nc" else None,
            dim=s.dim, num_layers=s.num_layers, dropout=s.dropout, act=s.act, bias=s.bias,
            margin=s.margin, k=s.k)
        _check_rank(model, s)
        return model

    def default_targets(self, settings, model) -> dict:
        from ..models.hybonet import HYBONET_TARGETS

        return {"target_modules": HYBONET_TARGETS}

    def batches(self, settings: GraphSettings, data) -> Batches:
        inputs = (data.features, data.adj_norm)
        sampler = NegativeSampler(data.rng)

        def shard(inputs, sampler, world):
            """Under DDP: the whole graph, and this rank's part of the loss's terms."""
            return inputs, GraphShare(sampler, world.rank, world.size)

        train_terms = len(data.idx_train if settings.task == "nc" else data.train_edges)
        return Batches(settings.schedule.epochs, lambda step, micro: (inputs, sampler), 0,
                       state=sampler, shard=shard, min_rows=train_terms)

    def loop_settings(self, settings: GraphSettings, batches: Batches):
        from ..training.runner import loop_settings

        # HyboNet's loop: no warm-up, a log line at every evaluation, no extra evaluation
        # after the last epoch; print every 100th of the per-epoch evaluations.
        s = settings.resolved()
        return dataclasses.replace(
            loop_settings(s, batches.steps, warmup_steps=0), log_every=s.eval.eval_every,
            evaluate_last=False, print_every_evals=100)

    def lr_lambda(self, settings: GraphSettings, method, steps: int):
        every, gamma = settings.schedule.lr_reduce_freq or steps, settings.schedule.gamma
        return lambda t: gamma ** (t // every) * method.restart_factor(t)

    def optimizer_builder(self, settings: GraphSettings):
        from ..hyperbolic.optim import build_hyperbolic_optimizer

        def build(model, method, lr: float, weight_decay: float):
            return build_hyperbolic_optimizer(model, method, lr=lr, weight_decay=weight_decay,
                                              riemannian=settings.riemannian)

        return build

    def loss(self, settings, data):
        def loss_fn(model, inputs, sampler):
            embeddings = model(*inputs)
            model = getattr(model, "module", model)  # DDP's wrapper forwards only forward()
            if isinstance(sampler, GraphShare):
                return model.loss(embeddings, data, "train", sampler.sampler.rng,
                                  part=(sampler.index, sampler.count))
            return model.loss(embeddings, data, "train", sampler.rng)

        return loss_fn

    def evaluator(self, settings: GraphSettings, data) -> EarlyStopping:
        return EarlyStopping(settings, data)

    def finish(self, settings: GraphSettings, data, model, method, result,
               batches: Batches) -> dict:
        stopping = result.evaluator
        if settings.save_embeddings and stopping.best_h is not None:
            _save_embeddings(Path(settings.output.output_dir) / "embeddings.npy",
                             stopping.best_h)
        return {"seed": settings.seed, "graph_task": settings.task,
                "settings": asdict(settings.resolved()),
                "epochs_run": result.final_step, "best_epoch": stopping.best_epoch,
                "best_val_score": stopping.best_score, "val": stopping.best_val,
                "test": stopping.best_test, "curve": stopping.curve}

    def title(self, settings: GraphSettings, data, seeds: list[int]) -> str:
        s = settings.resolved()
        return (f"HyboNet {s.dataset} {s.task.upper()}, dim {s.dim}, rank {s.method.rank}, "
                f"{len(seeds)} seed(s), split {s.split}")

    def results_extras(self, settings: GraphSettings, data) -> dict:
        extras: dict[str, Any] = {"notes": list(data.notes)}
        if settings.task == "nc":
            extras["labels"] = data.labels.tolist()
        return extras

    def compare_extras(self, settings, data, outcome, first_seed: bool) -> dict:
        if not first_seed:
            return {}
        return {"embedding_2d": poincare_projection(outcome.result.evaluator.best_h,
                                                    settings.k)}

    def aggregate(self, runs: list[dict], seeds: list[int]) -> dict:
        first = runs[0]
        return {"trainable_params": first["trainable_params"],
                "total_params": first["total_params"],
                "grad_optimizer_bytes": first["grad_optimizer_bytes"],
                "step_time_s": statistics.median(r["step_time_s"] for r in runs),
                **aggregate_runs(runs, first["graph_task"]), "runs": runs}

    def ablation_record(self, summary: dict, run_dir) -> dict:
        # One point per evaluated epoch; "step" is the epoch (full batch: a step per epoch).
        curve = [{"step": p["epoch"], "val_loss": p["val_loss"], "val_score": p["val_score"]}
                 for p in summary["curve"]]
        trace = [{"step": p["epoch"], "grad_norm": p["grad_norm"]} for p in summary["curve"]]
        return {"curve": curve, "grad_norm": trace,
                "extra": {k: summary[k] for k in ("best_epoch", "val", "test")}}

    def summary_line(self, summary: dict) -> str:
        shown = ", ".join(f"{k} {summary['test'][k]:.4f}" for k in REPORTED[summary["graph_task"]])
        return (f"best val epoch {summary['best_epoch']} of {summary['epochs_run']}; "
                f"test {shown}")


def _save_embeddings(path: Path, points: torch.Tensor) -> None:
    from .._util.atomic import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, points.numpy())

    atomic_write(path, write)


GRAPH = GraphTask()
