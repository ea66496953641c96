"""Image classification with MLPs: Fashion-MNIST and scikit-learn's 8x8 digits.

Every method trains through the generic loop and the method life cycle (``make_method``,
``prepare``, ``build_optimizer``, ``after_step``, ``lr_lambda``); every hidden linear layer is
a target and the classification head stays dense, as the paper keeps output heads dense.

Data: a seeded ``val_fraction`` of the training images is held out for validation (model
selection and curves); the test split is only used for the final figures. Fashion-MNIST's
test split is its official 10,000 images; digits has no official split, so 20% of it
(seeded) is the test split, as in ``sst demo``.

``run_train`` writes ``<output_dir>/{metrics.jsonl, checkpoints/, summary.json}``;
``run_compare`` trains several methods (and seeds) under the same data, model, steps and
schedule and writes ``results.json`` + ``report.md`` + plots (:mod:`..report_images`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..accounting import count_parameters
from .._util.atomic import atomic_write_json
from ..methods import make_method
from ..training.loggers import JsonlLogger, MultiLogger, TensorBoardLogger
from ..training.loop import LoopSettings, train
from .lm import _resume_step, method_settings, weight_spectra

DATASETS = ("fashion-mnist", "digits")
DEFAULT_METHODS = ("full", "lora", "relora", "galore", "sst")


@dataclass
class ImagesSettings:
    """Everything that defines an image-classification run (CLI flags map 1:1 onto these)."""

    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1
    train_limit: int | None = None
    # model: input -> hidden[0] -> ... -> hidden[-1] -> classes, ReLU between
    hidden: list[int] = field(default_factory=lambda: [512, 512])
    # method
    method: str = "sst"
    rank: int = 32
    method_options: dict[str, Any] = field(default_factory=dict)
    # optimisation
    lr: float = 1e-3
    batch_size: int = 128
    epochs: float | None = 5.0
    num_training_steps: int = 1000
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 200
    log_every: int = 10
    save_every: int = 0
    seed: int = 0
    # output
    output_dir: str = "runs/images"
    tensorboard: bool = False

    def __post_init__(self):
        if isinstance(self.hidden, str):
            self.hidden = [int(w) for w in self.hidden.split(",") if w.strip()]
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is unknown; allowed: {list(DATASETS)}")
        if not self.hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                  for w in self.hidden):
            raise ValueError(f"hidden={self.hidden!r} must be a non-empty list of ints >= 1 "
                             "(the hidden widths, e.g. 512,512)")
        for name in ("rank", "batch_size", "num_training_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.train_limit is not None and self.train_limit < 2:
            raise ValueError(f"train_limit={self.train_limit} must be None or >= 2")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r} must be > 0 (or None to use "
                             "num_training_steps)")

    def loop_settings(self, num_training_steps: int) -> LoopSettings:
        return LoopSettings(
            num_training_steps=num_training_steps, lr=self.lr, weight_decay=self.weight_decay,
            warmup_steps=min(self.warmup_steps, num_training_steps),
            min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip,
            eval_every=self.eval_every, save_every=self.save_every, log_every=self.log_every)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ImagesSettings:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**values)


# ---------------------------------------------------------------------- data
@dataclass
class ImagesData:
    """Flattened, standardised splits: ``x`` ``(N, D)`` float32, ``y`` ``(N,)`` int64."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    name: str
    num_classes: int

    @property
    def input_dim(self) -> int:
        return self.splits["train"][0].shape[1]


def _split_off(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """``(rest, held_out)`` with a seeded ``fraction`` of the rows held out."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n = max(1, int(round(len(y) * fraction)))
    return (x[perm[n:]], y[perm[n:]]), (x[perm[:n]], y[perm[:n]])


def prepare_data(settings: ImagesSettings) -> ImagesData:
    """Load the data set, hold out validation, standardise with training statistics.

    Fashion-MNIST pixels are scaled to [0, 1] and standardised by one mean and std; digits
    features per feature (as the demo does). The validation split is drawn with the seed,
    so every method of a comparison sees the same split.
    """
    if settings.dataset == "fashion-mnist":
        from ..data.idx import load_fashion_mnist

        (tx, ty), (ex, ey) = load_fashion_mnist(settings.data_dir)
        x = torch.from_numpy(tx).reshape(len(tx), -1).float() / 255.0
        test = (torch.from_numpy(ex).reshape(len(ex), -1).float() / 255.0,
                torch.from_numpy(ey).long())
        train_xy, val = _split_off(x, torch.from_numpy(ty).long(), settings.val_fraction,
                                   settings.seed)
        if settings.train_limit:
            train_xy = (train_xy[0][:settings.train_limit], train_xy[1][:settings.train_limit])
        mean, std = train_xy[0].mean(), train_xy[0].std().clamp_min(1e-6)
        name, classes = "Fashion-MNIST", 10
    else:
        from .digits import load_digits_split

        # load_digits_split standardises by its training rows; validation comes out of them.
        (tx, ty), test = load_digits_split(settings.seed)
        train_xy, val = _split_off(tx, ty, settings.val_fraction, settings.seed)
        if settings.train_limit:
            train_xy = (train_xy[0][:settings.train_limit], train_xy[1][:settings.train_limit])
        mean, std = torch.tensor(0.0), torch.tensor(1.0)
        name, classes = "sklearn digits 8x8", 10
    splits = {key: ((xs - mean) / std, ys)
              for key, (xs, ys) in (("train", train_xy), ("validation", val), ("test", test))}
    return ImagesData(splits, name, classes)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """Row indices ``(n // batch_size, batch_size)`` of one epoch (last partial batch dropped).

    Keyed by ``(seed, epoch)`` so that a batch is a pure function of the step (exact resume).
    """
    if n < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the training split ({n} "
                         "examples)")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    count = n // batch_size
    return torch.randperm(n, generator=gen)[: count * batch_size].view(count, batch_size)


# ---------------------------------------------------------------------- model and method
def build_mlp(input_dim: int, hidden: list[int], num_classes: int, seed: int = 0) -> nn.Sequential:
    """``input_dim -> hidden... -> num_classes`` MLP, ReLU between; the last layer is the head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    dims = [input_dim, *hidden]
    for d_in, d_out in zip(dims, dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], num_classes))
    return nn.Sequential(*layers)


def build_model_and_method(settings: ImagesSettings, data: ImagesData):
    """The MLP converted by the method; the head (last layer) is excluded from replacement."""
    model = build_mlp(data.input_dim, settings.hidden, data.num_classes, settings.seed)
    config = method_settings(settings)
    if "exclude_modules" not in settings.method_options:
        config["exclude_modules"] = [str(len(model) - 1)]
    method = make_method(settings.method, **config)
    return method.prepare(model), method


def classification_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` ``(B, C)`` against labels ``(B,)``."""
    return nn.functional.cross_entropy(model(x), y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 2048) -> dict[str, float]:
    """``{"loss", "accuracy"}`` over the whole split (sums, not means of batch means)."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size])
        loss += nn.functional.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += int((logits.argmax(-1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return {"loss": loss / len(y), "accuracy": correct / len(y)}


# ---------------------------------------------------------------------- one run
def total_steps(settings: ImagesSettings, train_size: int) -> int:
    """Optimizer steps of the run: ``epochs`` worth of full batches, else the step setting."""
    if settings.epochs is None:
        return settings.num_training_steps
    return max(1, math.ceil(settings.epochs * (train_size // settings.batch_size)))


def run_train(settings: ImagesSettings, resume: bool = False, progress: bool = True,
              data: ImagesData | None = None) -> dict[str, Any]:
    """Train one method; write metrics, checkpoints and ``summary.json``; return the summary."""
    return _train_run(settings, resume, progress, data)[0]


def _train_run(settings: ImagesSettings, resume: bool, progress: bool,
               data: ImagesData | None):
    """:func:`run_train`, also returning the trained model and its method."""
    data = data or prepare_data(settings)
    train_x, train_y = data.splits["train"]
    val_x, val_y = data.splits["validation"]
    steps = total_steps(settings, len(train_y))
    loop_settings = settings.loop_settings(steps)
    per_epoch = len(train_y) // settings.batch_size
    run_dir = Path(settings.output_dir)
    model, method = build_model_and_method(settings, data)
    trainable, total = count_parameters(model)
    loggers = [JsonlLogger(run_dir / "metrics.jsonl", resume_step=_resume_step(run_dir, resume))]
    if settings.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    logger = MultiLogger(*loggers)
    cached: dict[int, torch.Tensor] = {}

    def batch_fn(step: int, micro: int):
        epoch, index = divmod(step - 1, per_epoch)
        if epoch not in cached:
            cached.clear()
            cached[epoch] = epoch_batches(len(train_y), settings.batch_size, settings.seed,
                                          epoch)
        rows = cached[epoch][index]
        return train_x[rows], train_y[rows]

    def eval_fn(m: nn.Module) -> dict[str, float]:
        result = evaluate(m, val_x, val_y)
        return {"val_loss": result["loss"], "val_accuracy": result["accuracy"]}

    began = time.perf_counter()
    try:
        result = train(model, method, batch_fn=batch_fn, loss_fn=classification_loss,
                       eval_fn=eval_fn, settings=loop_settings, run_dir=run_dir, logger=logger,
                       checkpoint_settings=asdict(settings), resume=resume,
                       tokens_per_step=settings.batch_size, progress=progress)
    finally:
        logger.close()
    val = evaluate(model, val_x, val_y)
    test = evaluate(model, *data.splits["test"])
    summary = {
        "method": settings.method, "dataset": data.name, "settings": asdict(settings),
        "trainable_params": trainable, "total_params": total,
        "grad_optimizer_bytes": result.grad_optimizer_bytes,
        "step_time_s": result.median_step_time, "wall_time_s": time.perf_counter() - began,
        "final_step": result.final_step, "num_training_steps": steps,
        "epochs_trained": result.final_step / per_epoch,
        "val_loss": val["loss"], "val_accuracy": val["accuracy"],
        # The shared results schema wants a perplexity; exp(cross-entropy) is that number.
        "val_ppl": math.exp(min(val["loss"], 700.0)),
        "test_loss": test["loss"], "test_accuracy": test["accuracy"],
        "curve": [{"step": e["step"], "val_loss": e["val_loss"],
                   "val_accuracy": e["val_accuracy"]} for e in result.evaluations],
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary, model, method


# ---------------------------------------------------------------------- comparison
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_compare(settings: ImagesSettings, methods: list[str], method_lr: dict[str, float],
                seeds: list[int] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train each method (for each seed) under the same settings; write results and report.

    With several seeds each method's numbers are means over seeds (``*_std`` beside them,
    per-seed figures under ``"seeds"``); curves, spectra and step times are the first seed's.
    """
    from ..report import render

    seeds = list(seeds) if seeds else [settings.seed]
    out = Path(settings.output_dir)
    data_by_seed: dict[int, ImagesData] = {}
    hidden = "-".join(map(str, settings.hidden))
    results: dict[str, Any] = {
        "task": "images", "title": "",
        "settings": {**asdict(settings), "methods": methods, "method_lr": method_lr,
                     "seeds": seeds, "threads": torch.get_num_threads()},
        "methods": {},
    }
    for name in methods:
        runs = []
        for seed in seeds:
            if seed not in data_by_seed:
                data_by_seed[seed] = prepare_data(dataclasses.replace(settings, seed=seed))
            data = data_by_seed[seed]
            results["title"] = (f"MLP {data.input_dim}-{hidden}-{data.num_classes} on "
                                f"{data.name}, rank {settings.rank}")
            folder = out / name if len(seeds) == 1 else out / name / f"seed_{seed}"
            run = dataclasses.replace(settings, method=name, seed=seed,
                                      lr=method_lr.get(name, settings.lr), output_dir=str(folder))
            print(f"== {name} (lr {run.lr:g}, seed {seed}) ==", flush=True)
            summary, model, method = _train_run(run, resume=False, progress=progress, data=data)
            if not runs:
                summary["spectra"] = weight_spectra(model, method)
            runs.append(summary)
        entry = runs[0]
        entry.pop("settings")
        # Show the steps actually trained (epochs decide them) and no per-run method name.
        results["settings"]["num_training_steps"] = entry["num_training_steps"]
        results["settings"].pop("method", None)
        entry["lr"] = method_lr.get(name, settings.lr)
        entry["seeds"] = [{"seed": s, **{k: r[k] for k in ("val_loss", "val_accuracy",
                                                           "test_loss", "test_accuracy")}}
                          for s, r in zip(seeds, runs)]
        for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in runs])
        entry["val_ppl"] = math.exp(min(entry["val_loss"], 700.0))
        results["methods"][name] = entry
        atomic_write_json(out / "results.json", results)  # partial results survive a crash
    render(out)
    return results
