"""Language-model pre-training: data + model + metric, trained by any method.

``run_train`` trains one method and writes a run folder::

    <output_dir>/metrics.jsonl    one JSON line per log / evaluation
    <output_dir>/checkpoints/     step_XXXXXX/ directories + ``latest``
    <output_dir>/summary.json     final figures (written atomically at the end)

``run_compare`` trains several methods under the same data, model, steps, seed and
schedule and writes ``results.json`` plus the rendered report.

Perplexity is ``exp`` of the mean token negative log-likelihood over the whole held-out
split (not a mean of batch means); during training, evaluations may be limited to the first
``eval_tokens`` tokens of the validation split to stay cheap, and the final figures always
use whole splits.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..accounting import count_parameters
from ..methods import make_method
from ..methods.base import method_config_fields
from ..spectral.pruning import prune_spectrum
from .._util.atomic import atomic_write_json
from ..targeting import find_target_modules
from ..training.loggers import JsonlLogger, MultiLogger, TensorBoardLogger
from ..training.loop import LoopSettings, train

PRUNING_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LMSettings:
    """Everything that defines a language-model run (CLI flags map 1:1 onto these)."""

    # data
    corpus: str = "shakespeare"
    text: str | None = None
    data_dir: str | None = None
    tokenizer: str = "char"
    vocab_size: int = 2048
    block_size: int = 128
    # model
    model: str = "gpt_cpu"
    dropout: float = 0.0
    # method
    method: str = "sst"
    rank: int = 16
    method_options: dict[str, Any] = field(default_factory=dict)
    # optimisation
    lr: float = 1e-3
    batch_size: int = 16
    total_batch_size: int | None = None
    num_training_steps: int = 1000
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 32768
    save_every: int = 0
    seed: int = 0
    # output
    output_dir: str = "runs/lm"
    tensorboard: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.total_batch_size is not None and (
                self.total_batch_size < self.batch_size
                or self.total_batch_size % self.batch_size):
            raise ValueError(f"total_batch_size={self.total_batch_size} must be a multiple of "
                             f"batch_size={self.batch_size}")

    @property
    def grad_accumulation(self) -> int:
        return (self.total_batch_size or self.batch_size) // self.batch_size

    @property
    def tokens_per_step(self) -> int:
        return (self.total_batch_size or self.batch_size) * self.block_size

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(
            num_training_steps=self.num_training_steps, lr=self.lr,
            weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip,
            grad_accumulation=self.grad_accumulation, eval_every=self.eval_every,
            save_every=self.save_every)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LMSettings":
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**values)


# ---------------------------------------------------------------------- data and model
@dataclass
class LMData:
    tokenizer: Any
    splits: dict[str, torch.Tensor]  # split name -> (N,) int64 token ids
    corpus_name: str


def prepare_data(settings: LMSettings) -> LMData:
    """Load the corpus, get (train or load) its tokenizer and encode every split."""
    from ..data import encode_splits, get_tokenizer, load_corpus

    corpus = load_corpus("text" if settings.text else settings.corpus,
                         data_dir=settings.data_dir, text_path=settings.text)
    tokenizer = get_tokenizer(settings.tokenizer, corpus,
                              vocab_size=settings.vocab_size if settings.tokenizer == "bpe" else None)
    splits = encode_splits(corpus, tokenizer)
    for name, ids in splits.items():
        if len(ids) < settings.block_size + 1:
            raise ValueError(f"the {name} split of corpus {corpus.name!r} has {len(ids)} tokens, "
                             f"fewer than one block (block_size + 1 = {settings.block_size + 1})")
    return LMData(tokenizer, splits, corpus.name)


def method_settings(settings: LMSettings) -> dict[str, Any]:
    """The method's config from the run settings: rank, seed and the options it accepts.

    ReLoRA's ``merge_interval`` and GaLore's ``update_proj_gap`` default to SST's T3
    (``iteration_interval``), so that every method refreshes its subspace equally often.
    """
    fields = method_config_fields(settings.method)
    options = dict(settings.method_options)
    t3 = options.get("iteration_interval")
    if t3 is not None:
        options.setdefault("merge_interval", t3)
        options.setdefault("update_proj_gap", t3)
    chosen = {k: v for k, v in options.items() if k in fields}
    if "rank" in fields:
        chosen["rank"] = settings.rank
    if "seed" in fields:
        chosen["seed"] = settings.seed
    return chosen


def build_model_and_method(settings: LMSettings, vocab_size: int):
    """The preset model, converted by the method."""
    from ..models import build_lm

    model = build_lm(settings.model, vocab_size=vocab_size, block_size=settings.block_size,
                     seed=settings.seed, dropout=settings.dropout)
    method = make_method(settings.method, **method_settings(settings))
    return method.prepare(model), method


def lm_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy of a causal LM on ``(B, T)`` inputs and shifted targets."""
    logits = model(input_ids=inputs).logits  # (B, T, V)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def evaluate_split(model: nn.Module, ids: torch.Tensor, block_size: int, batch_size: int,
                   max_tokens: int | None = None) -> dict[str, float]:
    """``{"loss", "ppl", "tokens"}`` over ``ids`` (or its first ``max_tokens`` tokens)."""
    from ..data import evaluate_lm

    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    loss, count, ppl = evaluate_lm(lambda x: model(input_ids=x).logits, ids, block_size,
                                   batch_size)
    return {"loss": loss, "ppl": ppl, "tokens": count}


# ---------------------------------------------------------------------- one run
def run_train(settings: LMSettings, resume: bool = False, progress: bool = True,
              data: LMData | None = None) -> dict[str, Any]:
    """Train one method; write metrics, checkpoints and ``summary.json``; return the summary."""
    return _train_run(settings, resume, progress, data)[0]


def _train_run(settings: LMSettings, resume: bool, progress: bool, data: LMData | None):
    """:func:`run_train`, also returning the trained model and its method."""
    from ..data import training_batch

    loop_settings = settings.loop_settings()  # validate before touching data or files
    data = data or prepare_data(settings)
    run_dir = Path(settings.output_dir)
    model, method = build_model_and_method(settings, data.tokenizer.vocab_size)
    trainable, total = count_parameters(model)
    train_ids, val_ids = data.splits["train"], data.splits["validation"]
    loggers = [JsonlLogger(run_dir / "metrics.jsonl", resume_step=_resume_step(run_dir, resume))]
    if settings.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    logger = MultiLogger(*loggers)

    def batch_fn(step: int, micro: int):
        index = (step - 1) * settings.grad_accumulation + micro
        return training_batch(train_ids, index, settings.batch_size, settings.block_size,
                              settings.seed)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        result = evaluate_split(m, val_ids, settings.block_size, settings.batch_size,
                                settings.eval_tokens)
        return {"val_loss": result["loss"], "val_ppl": result["ppl"]}

    began = time.perf_counter()
    try:
        result = train(model, method, batch_fn=batch_fn, loss_fn=lm_loss, eval_fn=eval_fn,
                       settings=loop_settings, run_dir=run_dir, logger=logger,
                       checkpoint_settings=asdict(settings), resume=resume,
                       tokens_per_step=settings.tokens_per_step, progress=progress)
    finally:
        logger.close()
    model.eval()
    with torch.no_grad():
        val = evaluate_split(model, val_ids, settings.block_size, settings.batch_size)
        test = evaluate_split(model, data.splits["test"], settings.block_size,
                              settings.batch_size)
    summary = {
        "method": settings.method, "settings": asdict(settings),
        "trainable_params": trainable, "total_params": total,
        "grad_optimizer_bytes": result.grad_optimizer_bytes,
        "step_time_s": result.median_step_time, "wall_time_s": time.perf_counter() - began,
        "final_step": result.final_step,
        "val_loss": val["loss"], "val_ppl": val["ppl"], "test_ppl": test["ppl"],
        "curve": [{"step": e["step"], "val_loss": e["val_loss"]} for e in result.evaluations],
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary, model, method


def _resume_step(run_dir: Path, resume: bool) -> int | None:
    if not resume:
        return None
    from ..training.checkpoint import latest_checkpoint, read_checkpoint_state

    path = latest_checkpoint(run_dir)
    return None if path is None else int(read_checkpoint_state(path)["step"])


# ---------------------------------------------------------------------- spectra and pruning
@torch.no_grad()
def weight_spectra(model: nn.Module, method, count: int = 3) -> dict[str, list[float]]:
    """Singular values (descending) of ``count`` target weights: first, middle, last."""
    merged = method.merge(model)
    targets = find_target_modules(merged, "all-linear")
    picks = sorted({0, len(targets) // 2, len(targets) - 1})[:count]
    spectra = {}
    for i in picks:
        name, module = targets[i]
        weight = module.weight.detach().float()
        spectra[name] = torch.linalg.svdvals(weight).tolist()
    return spectra


@torch.no_grad()
def pruning_curve(model: nn.Module, method, data: LMData, settings: LMSettings,
                  ratios=PRUNING_RATIOS) -> list[dict[str, float]]:
    """Validation perplexity after keeping the top ``ceil((1 - ratio) k)`` triplets per layer."""
    merged = method.merge(model) if method.name != "sst" else model
    curve = []
    for ratio in ratios:
        pruned = prune_spectrum(merged, ratio).eval()
        result = evaluate_split(pruned, data.splits["validation"], settings.block_size,
                                settings.batch_size, settings.eval_tokens)
        curve.append({"ratio": ratio, "ppl": result["ppl"]})
    return curve


# ---------------------------------------------------------------------- comparison
def run_compare(settings: LMSettings, methods: list[str], method_lr: dict[str, float],
                progress: bool = True, pruning: bool = True) -> dict[str, Any]:
    """Train each method under the same settings; write ``results.json`` and the report."""
    from ..report import render

    out = Path(settings.output_dir)
    data = prepare_data(settings)
    results: dict[str, Any] = {
        "task": "lm",
        "title": f"{settings.model} on {data.corpus_name}, rank {settings.rank}, "
                 f"{settings.num_training_steps} steps",
        "settings": {**asdict(settings), "methods": methods, "method_lr": method_lr,
                     "threads": torch.get_num_threads()},
        "methods": {},
    }
    for name in methods:
        run = dataclasses.replace(settings, method=name, lr=method_lr.get(name, settings.lr),
                                  output_dir=str(out / name))
        print(f"== {name} (lr {run.lr:g}) ==", flush=True)
        summary, model, method = _train_run(run, resume=False, progress=progress, data=data)
        summary.pop("settings")
        summary["lr"] = run.lr
        summary["spectra"] = weight_spectra(model, method)
        summary["pruning"] = (pruning_curve(model, method, data, run)
                              if pruning and name in ("full", "sst") else None)
        results["methods"][name] = summary
        atomic_write_json(out / "results.json", results)  # partial results survive a crash
    render(out)
    return results
