"""Image classification with MLPs: Fashion-MNIST and scikit-learn's 8x8 digits.

The ``images`` task (:data:`IMAGES`): every method trains through the one loop and the
method life cycle; every hidden linear layer is a target and the classification head stays
dense, as the paper keeps output heads dense. The headline is test accuracy.

Data: a seeded ``val_fraction`` of the training images is held out for validation (model
selection and curves); the test split is only used for the final figures. Fashion-MNIST's
test split is its official 10,000 images; digits has no official split, so 20% of it
(seeded) is the test split, as in ``sst demo``.

The validation split is drawn with the seed, so ``data_key`` is the seed: ``sst compare``
prepares the data once per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..training.config import (
    EvalSettings,
    MethodChoice,
    OutputSettings,
    ScheduleSettings,
    TaskSettings,
    _help,
)
from .base import Batches, Headline, TaskBase

DATASETS = ("fashion-mnist", "digits")


@dataclass
class ImagesSettings(TaskSettings):
    """Everything that defines an image-classification run (one flag per field)."""

    # data
    dataset: str = field(default="fashion-mnist", metadata=_help("fashion-mnist or digits"))
    data_dir: str | None = field(default=None, metadata=_help(
        "data directory holding fashion-mnist/ or FashionMNIST/raw/ (default $SST_DATA_DIR)"))
    val_fraction: float = field(default=0.1, metadata=_help(
        "share of the training images held out for validation"))
    train_limit: int | None = field(default=None, metadata=_help(
        "use only the first N training images"))
    # model: input -> hidden[0] -> ... -> hidden[-1] -> classes, ReLU between
    hidden: list[int] = field(default_factory=lambda: [512, 512], metadata=_help(
        "hidden widths, comma-separated"))
    batch_size: int = field(default=128, metadata=_help("images per step"))
    method: MethodChoice = field(default_factory=lambda: MethodChoice(rank=32))
    schedule: ScheduleSettings = field(default_factory=lambda: ScheduleSettings(epochs=5.0))
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(eval_every=200))
    output: OutputSettings = field(
        default_factory=lambda: OutputSettings(output_dir="runs/images"))

    def validate(self):
        super().validate()
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is unknown; allowed: {list(DATASETS)}")
        if not self.hidden or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                  for w in self.hidden):
            raise ValueError(f"hidden={self.hidden!r} must be a non-empty list of ints >= 1 "
                             "(the hidden widths, e.g. 512,512)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} must be an int >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.train_limit is not None and self.train_limit < 2:
            raise ValueError(f"train_limit={self.train_limit} must be None or >= 2")


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
        from ..data.digits import load_digits_split

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


# ---------------------------------------------------------------------- the task
def total_steps(settings: ImagesSettings, train_size: int) -> int:
    """Optimizer steps of the run: ``epochs`` worth of full batches, else the step setting."""
    if settings.schedule.epochs is None:
        return settings.schedule.num_training_steps
    return max(1, math.ceil(settings.schedule.epochs * (train_size // settings.batch_size)))


class ImageClassification(TaskBase):
    """``sst train|compare|ablate images`` (and ``sst demo``: digits)."""

    name = "images"
    description = "MLP classifiers on Fashion-MNIST or scikit-learn's 8x8 digits"
    settings_class = ImagesSettings
    seed_metrics = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")
    ablation_extras = ("val_accuracy", "val_loss")
    summary_format = "test accuracy {test_accuracy:.2%}, val accuracy {val_accuracy:.2%}"

    def headline(self, settings) -> Headline:
        return Headline("test_accuracy", "test accuracy", higher_is_better=True)

    def data_key(self, settings: ImagesSettings):
        return settings.seed  # the validation split is drawn with the seed

    prepare_data = staticmethod(prepare_data)

    def build_model(self, settings: ImagesSettings, data: ImagesData) -> nn.Module:
        return build_mlp(data.input_dim, settings.hidden, data.num_classes, settings.seed)

    def default_targets(self, settings, model: nn.Module) -> dict:
        return {"exclude_modules": [str(len(model) - 1)]}  # the head stays dense

    def batches(self, settings: ImagesSettings, data: ImagesData) -> Batches:
        train_x, train_y = data.splits["train"]
        per_epoch = len(train_y) // settings.batch_size
        steps = total_steps(settings, len(train_y))
        cached: dict[int, torch.Tensor] = {}

        def batch_fn(step: int, micro: int):
            epoch, index = divmod(step - 1, per_epoch)
            if epoch not in cached:
                cached.clear()
                cached[epoch] = epoch_batches(len(train_y), settings.batch_size,
                                              settings.seed, epoch)
            rows = cached[epoch][index]
            return train_x[rows], train_y[rows]

        return Batches(steps, batch_fn, settings.batch_size, rows=settings.batch_size)

    def loop_settings(self, settings, batches: Batches):
        from ..training.runner import loop_settings

        return loop_settings(settings, batches.steps,
                             warmup_steps=min(settings.schedule.warmup_steps, batches.steps))

    def loss(self, settings, data):
        return classification_loss

    def evaluator(self, settings, data: ImagesData):
        def evaluate_validation(model: nn.Module) -> dict[str, float]:
            result = evaluate(model, *data.splits["validation"])
            return {"val_loss": result["loss"], "val_accuracy": result["accuracy"]}

        return evaluate_validation

    def finish(self, settings, data: ImagesData, model, method, result,
               batches: Batches) -> dict:
        val = evaluate(model, *data.splits["validation"])
        test = evaluate(model, *data.splits["test"])
        per_epoch = len(data.splits["train"][1]) // settings.batch_size
        return {"dataset": data.name, "epochs_trained": result.final_step / per_epoch,
                "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                "test_loss": test["loss"], "test_accuracy": test["accuracy"]}

    def title(self, settings: ImagesSettings, data: ImagesData, seeds: list[int]) -> str:
        hidden = "-".join(map(str, settings.hidden))
        return (f"MLP {data.input_dim}-{hidden}-{data.num_classes} on {data.name}, rank "
                f"{settings.method.rank}")



IMAGES = ImageClassification()
