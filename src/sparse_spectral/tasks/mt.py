"""Machine translation on Multi30k (German to English by default), trained by any method.

``run_train`` trains one method and writes a run folder::

    <output_dir>/metrics.jsonl    one JSON line per log / evaluation
    <output_dir>/checkpoints/     step_XXXXXX/ directories + ``latest``
    <output_dir>/summary.json     final figures, test BLEU with its sacreBLEU signature,
                                  translation examples (written atomically at the end)

``run_compare`` trains several methods under the same data, model, steps, seed and schedule
and writes ``results.json`` plus the report (:mod:`sparse_spectral.report_mt`).

Pipeline: the raw Multi30k splits (:mod:`..data.multi30k`), one joint byte-level BPE trained
on both training sides and cached (:mod:`..data.bpe`), token-based batches
(:mod:`..data.mt_batching`), a translation model (``model="euclidean"``: the pre-norm
Transformer of :mod:`..models.transformer`; ``"hyperbolic"``: HyboNet's Lorentz Transformer
of :mod:`..models.lorentz_transformer`), and the method life cycle: ``method.prepare``
replaces the targets (``target_modules="all-linear"``: every inner linear map of encoder and
decoder, i.e. attention q/k/v/out projections and both feed-forward layers, plus for the
Lorentz model the positional LorentzLinear; the embeddings and the output projection stay
dense and train normally, as do LayerNorms and biases), then ``training.loop.train`` runs the
optimizer and ``after_step``.

Hyperbolic model, HyboNet's choices (docs/hyperbolic_transformer.md): an untied output
manifold table (``tie_embeddings=None`` means False for it, True for the Euclidean model),
``dropout=None`` means HyboNet's IWSLT ``-dropout 0`` (Euclidean: 0.1) and
``attention_dropout=None`` its 0.1 on the Q/K/V inputs (positional dropout is 0.1, fixed as in
its code); the manifold tables are trained by HyboNet's Riemannian Adam beside the method's
optimizer (:func:`..hyperbolic.optim.build_hyperbolic_optimizer`, one optimizer for the loop,
its checkpoints and ``after_step``). Label smoothing stays the task's setting for both
families: 0.1 by default as the paper says; HyboNet's code silently trains with none
(``label_smoothing=0`` reproduces that).

Learning rate: the inverse-square-root schedule with linear warm-up,
``lr(s) = peak * min(s / w, sqrt(w / s))`` at optimizer step ``s`` (1-based). With
``schedule="noam"``, ``lr`` is Noam's factor and ``peak = lr * (d_model * w) ** -0.5``;
that is exactly Noam's ``lr * d^-0.5 * min(s^-0.5, s w^-1.5)``. The method's own schedule
contributes only its restart factor: ``method.lr_lambda(total, 0, 1.0)`` (no warm-up, a flat
envelope), which is 1 except during the re-warm-ups after ReLoRA*/SST restarts when
``restart_warmup_steps > 0``. The product is the multiplier.

Loss: token cross-entropy with label smoothing (0.1 by default), padding ignored, mean over
the target tokens of a batch. Validation loss and perplexity use plain NLL (no smoothing).
The final model (no checkpoint selection, as in HyboNet) is decoded on the test set with
beam search (beam 4, GNMT length penalty alpha 1, max length ``1.2 |src| + 10``; reference
section 3.7) and scored with sacreBLEU on detokenised, cased text (its default 13a
tokenisation); the signature is stored with the score.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..accounting import count_parameters
from .._util.atomic import atomic_write_json
from ..hyperbolic.optim import RIEMANNIAN_KINDS
from ..methods import make_method
from ..training.loggers import JsonlLogger, MultiLogger, TensorBoardLogger
from ..training.loop import LoopSettings, train
from .lm import _resume_step, method_settings, weight_spectra

MODEL_FAMILIES = ("euclidean", "hyperbolic")
SCHEDULES = ("inverse_sqrt", "noam")
DEFAULT_METHODS = ("full", "lora", "relora", "sst")
# dropout=None: the Euclidean default, and HyboNet's IWSLT `-dropout 0` (run.iwslt.64.sh).
DEFAULT_DROPOUT = {"euclidean": 0.1, "hyperbolic": 0.0}
# attention_dropout=None on the hyperbolic model: HyboNet's `-attention_dropout 0.1`.
HYBONET_ATTENTION_DROPOUT = 0.1


@dataclass
class MTSettings:
    """Everything that defines a translation run (CLI flags map 1:1 onto these)."""

    # data
    data_dir: str | None = None
    source_lang: str = "de"
    target_lang: str = "en"
    vocab_size: int = 4000
    train_pairs: int | None = None
    eval_pairs: int | None = None
    max_tokens: int = 4096
    # model
    model: str = "euclidean"
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int | None = None
    dropout: float | None = None  # None: the family's default (DEFAULT_DROPOUT)
    attention_dropout: float | None = None  # hyperbolic only; None: HyboNet's 0.1
    tie_embeddings: bool | None = None  # None: euclidean True, hyperbolic False (HyboNet)
    riemannian: str = "hybonet"  # hyperbolic only: kind of the Riemannian Adam
    # method
    method: str = "sst"
    rank: int = 8
    method_options: dict[str, Any] = field(default_factory=dict)
    # optimisation
    schedule: str = "inverse_sqrt"
    lr: float = 2e-3
    warmup_steps: int = 400
    num_training_steps: int = 2000
    epochs: float | None = None
    grad_accumulation: int = 1
    label_smoothing: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 200
    save_every: int = 0
    seed: int = 0
    # decoding and evaluation
    beam_size: int = 4
    length_penalty: float = 1.0
    max_len_a: float = 1.2
    max_len_b: float = 10.0
    decode_batch_size: int = 200
    num_examples: int = 5
    # output
    output_dir: str = "runs/mt"
    tensorboard: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "max_tokens", "d_model", "num_heads", "num_layers",
                     "warmup_steps", "num_training_steps", "grad_accumulation", "beam_size",
                     "decode_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        for name in ("train_pairs", "eval_pairs", "d_ff"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be None or an int >= 1")
        if self.model not in MODEL_FAMILIES:
            raise ValueError(f"model={self.model!r} is unknown; allowed: {list(MODEL_FAMILIES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is unknown; allowed: {list(SCHEDULES)}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r} must be > 0 (or None to use "
                             f"num_training_steps)")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} must be None or in [0, 1)")
        if self.model == "euclidean" and self.attention_dropout is not None:
            raise ValueError(f"attention_dropout={self.attention_dropout!r} is a setting of "
                             f"model='hyperbolic' only (the Euclidean model uses dropout)")
        if self.riemannian not in RIEMANNIAN_KINDS:
            raise ValueError(f"riemannian={self.riemannian!r} is unknown; allowed: "
                             f"{list(RIEMANNIAN_KINDS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.num_examples < 0:
            raise ValueError(f"num_examples={self.num_examples} must be >= 0")

    @property
    def model_dropout(self) -> float:
        """``dropout``, or the family's default when it is None."""
        return DEFAULT_DROPOUT[self.model] if self.dropout is None else self.dropout

    @property
    def tied(self) -> bool:
        """``tie_embeddings``, or the family's default when it is None."""
        return self.model == "euclidean" if self.tie_embeddings is None else self.tie_embeddings

    @property
    def peak_lr(self) -> float:
        """The learning rate at the end of warm-up (see the module docstring)."""
        if self.schedule == "noam":
            return self.lr * (self.d_model * self.warmup_steps) ** -0.5
        return self.lr

    def loop_settings(self, num_training_steps: int | None = None) -> LoopSettings:
        return LoopSettings(
            num_training_steps=num_training_steps or self.num_training_steps, lr=self.peak_lr,
            weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
            grad_clip=self.grad_clip, grad_accumulation=self.grad_accumulation,
            eval_every=self.eval_every, save_every=self.save_every)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MTSettings:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**values)


# ---------------------------------------------------------------------- schedule
def inverse_sqrt_lambda(warmup_steps: int) -> Callable[[int], float]:
    """``min(s / w, sqrt(w / s))`` at optimizer step ``s = t + 1`` (``t``: LambdaLR's index)."""
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps={warmup_steps} must be >= 1 for the inverse-sqrt "
                         f"schedule")

    def multiplier(t: int) -> float:
        s = t + 1
        return min(s / warmup_steps, math.sqrt(warmup_steps / s))

    return multiplier


def mt_lr_lambda(method, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Inverse-sqrt warm-up/decay times the method's restart factor (module docstring)."""
    base = inverse_sqrt_lambda(warmup_steps)
    restart = method.lr_lambda(total_steps, 0, 1.0)
    return lambda t: base(t) * restart(t)


# ---------------------------------------------------------------------- data
@dataclass
class MTSplit:
    """One split: raw text (for BLEU and examples) and BPE ids (for the model)."""

    source_text: tuple[str, ...]
    target_text: tuple[str, ...]
    source: list[np.ndarray]
    target: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.source)


@dataclass
class MTData:
    vocab: Any  # JointVocabulary
    splits: dict[str, MTSplit]
    name: str

    @property
    def ids(self):
        from ..data.mt_batching import SpecialIds

        return SpecialIds(self.vocab.pad_id, self.vocab.bos_id, self.vocab.eos_id)


def prepare_data(settings: MTSettings) -> MTData:
    """Read Multi30k, get (train or load) the joint BPE, encode every split.

    ``train_pairs`` / ``eval_pairs`` keep only the first pairs of the training / the
    validation and test splits (for quick runs and tests); the BPE is trained on the
    training pairs that are kept.
    """
    from ..data.bpe import get_joint_vocabulary
    from ..data.multi30k import load_multi30k

    raw = load_multi30k(settings.data_dir, settings.source_lang, settings.target_lang)
    raw = {"train": raw["train"].head(settings.train_pairs),
           "validation": raw["validation"].head(settings.eval_pairs),
           "test": raw["test"].head(settings.eval_pairs)}
    name = f"multi30k-{settings.source_lang}-{settings.target_lang}"
    vocab = get_joint_vocabulary(name, raw["train"].source, raw["train"].target,
                                 settings.vocab_size)
    splits = {split: MTSplit(text.source, text.target, vocab.encode_batch(text.source),
                             vocab.encode_batch(text.target))
              for split, text in raw.items()}
    return MTData(vocab, splits, name)


# ---------------------------------------------------------------------- model and method
def _build_euclidean(settings: MTSettings, vocab_size: int, pad_id: int) -> nn.Module:
    from ..models.transformer import TransformerConfig, TranslationTransformer

    torch.manual_seed(settings.seed)
    return TranslationTransformer(TransformerConfig(
        vocab_size=vocab_size, pad_id=pad_id, d_model=settings.d_model,
        num_heads=settings.num_heads, num_encoder_layers=settings.num_layers,
        num_decoder_layers=settings.num_layers, d_ff=settings.d_ff,
        dropout=settings.model_dropout, tie_embeddings=settings.tied))


def _build_hyperbolic(settings: MTSettings, vocab_size: int, pad_id: int) -> nn.Module:
    """HyboNet's Lorentz Transformer; config defaults (residual, sigma, ...) are its code's."""
    from ..models.lorentz_transformer import LorentzTransformerConfig, LorentzTranslationTransformer

    attention_dropout = (HYBONET_ATTENTION_DROPOUT if settings.attention_dropout is None
                         else settings.attention_dropout)
    torch.manual_seed(settings.seed)
    return LorentzTranslationTransformer(LorentzTransformerConfig(
        vocab_size=vocab_size, pad_id=pad_id, d_model=settings.d_model,
        num_heads=settings.num_heads, num_encoder_layers=settings.num_layers,
        num_decoder_layers=settings.num_layers, d_ff=settings.d_ff,
        dropout=settings.model_dropout, attention_dropout=attention_dropout,
        tie_embeddings=settings.tied))


def model_builder(family: str) -> Callable[[MTSettings, int, int], nn.Module]:
    """The builder ``(settings, vocab_size, pad_id) -> model`` of a model family.

    Raises:
        ValueError: an unknown family (the message lists the allowed ones).
    """
    if family == "euclidean":
        return _build_euclidean
    if family == "hyperbolic":
        return _build_hyperbolic
    raise ValueError(f"model={family!r} is unknown; allowed: {list(MODEL_FAMILIES)}")


def optimizer_builder(settings: MTSettings) -> Callable[..., torch.optim.Optimizer] | None:
    """The loop's ``build_optimizer`` hook: None (the method's own optimizer) for the
    Euclidean model; for the hyperbolic one the method's optimizer over the Euclidean
    parameters plus a Riemannian Adam over the manifold tables, as one optimizer."""
    if settings.model != "hyperbolic":
        return None
    from ..hyperbolic.optim import build_hyperbolic_optimizer

    def build(model: nn.Module, method, lr: float, weight_decay: float):
        return build_hyperbolic_optimizer(model, method, lr=lr, weight_decay=weight_decay,
                                          riemannian=settings.riemannian)

    return build


def build_model_and_method(settings: MTSettings, vocab_size: int, pad_id: int):
    """The translation model, converted by the method (targets: every inner linear map)."""
    model = model_builder(settings.model)(settings, vocab_size, pad_id)
    method = make_method(settings.method, **method_settings(settings))
    return method.prepare(model), method


# ---------------------------------------------------------------------- loss and evaluation
def translation_loss(model: nn.Module, src: torch.Tensor, tgt_in: torch.Tensor,
                     tgt_out: torch.Tensor, pad_id: int, label_smoothing: float = 0.0,
                     reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of teacher-forced logits, padding ignored.

    Args:
        src: ``(B, S)`` source ids.
        tgt_in: ``(B, T)`` decoder inputs.
        tgt_out: ``(B, T)`` targets; ``pad_id`` entries do not count.
        label_smoothing: torch's: the target gets ``1 - eps``, every class ``eps / V``.
        reduction: ``"mean"`` over target tokens or ``"sum"``.
    """
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1),
                           ignore_index=pad_id, label_smoothing=label_smoothing,
                           reduction=reduction)


@torch.no_grad()
def evaluate_loss(model: nn.Module, split: MTSplit, ids, max_tokens: int) -> dict[str, float]:
    """``{"loss", "ppl", "tokens"}``: mean token NLL over the whole split (no smoothing)."""
    from ..data.mt_batching import collate, token_batches

    total, count = 0.0, 0
    for chosen in token_batches([len(s) for s in split.source], [len(t) for t in split.target],
                                max_tokens):
        batch = collate(split.source, split.target, chosen, ids)
        total += float(translation_loss(model, batch.src, batch.tgt_in, batch.tgt_out, ids.pad,
                                        reduction="sum"))
        count += batch.target_tokens
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}


@torch.no_grad()
def translate(model: nn.Module, sources: list[np.ndarray], vocab, *, beam_size: int = 4,
              alpha: float = 1.0, max_len_a: float = 1.2, max_len_b: float = 10.0,
              batch_size: int = 200) -> list[str]:
    """Detokenised translations of BPE-encoded ``sources``, in their order.

    Sentences are decoded in batches of similar length; ``beam_size = 1`` is greedy search.
    """
    from ..data.mt_batching import pad_rows
    from ..models.decoding import beam_search, greedy_search

    was_training = model.training
    model.eval()
    banned = (vocab.pad_id, vocab.bos_id)
    max_positions = getattr(getattr(model, "config", None), "max_positions", None)
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), i))
    outputs: list[str] = [""] * len(sources)
    try:
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            src = pad_rows([np.append(sources[i], vocab.eos_id) for i in chosen], vocab.pad_id)
            common = dict(bos_id=vocab.bos_id, eos_id=vocab.eos_id, banned=banned,
                          max_len_a=max_len_a, max_len_b=max_len_b, max_positions=max_positions)
            if beam_size == 1:
                hyps = greedy_search(model, src, **common)
            else:
                hyps = beam_search(model, src, beam_size=beam_size, alpha=alpha, **common)
            for i, ids in zip(chosen, hyps):
                outputs[i] = vocab.decode(ids)
    finally:
        model.train(was_training)
    return outputs


def corpus_bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """sacreBLEU's corpus BLEU (default 13a tokenisation, cased) and its signature."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(metric.get_signature())


# ---------------------------------------------------------------------- one run
def run_train(settings: MTSettings, resume: bool = False, progress: bool = True,
              data: MTData | None = None) -> dict[str, Any]:
    """Train one method; write metrics, checkpoints and ``summary.json``; return the summary."""
    return _train_run(settings, resume, progress, data)[0]


def _total_steps(settings: MTSettings, batches_per_epoch: int) -> int:
    if settings.epochs is None:
        return settings.num_training_steps
    return max(1, math.ceil(settings.epochs * batches_per_epoch / settings.grad_accumulation))


def _train_run(settings: MTSettings, resume: bool, progress: bool, data: MTData | None):
    """:func:`run_train`, also returning the trained model and its method."""
    from ..data.mt_batching import EpochBatches

    model_builder(settings.model)  # fail on the model family before touching data or files
    if settings.epochs is None:
        settings.loop_settings()  # validate the schedule before touching data or files
    data = data or prepare_data(settings)
    ids = data.ids
    train_split, val_split = data.splits["train"], data.splits["validation"]
    batches = EpochBatches(train_split.source, train_split.target, ids, settings.max_tokens,
                           settings.seed)
    total_steps = _total_steps(settings, len(batches))
    loop_settings = settings.loop_settings(total_steps)
    run_dir = Path(settings.output_dir)
    model, method = build_model_and_method(settings, data.vocab.vocab_size, ids.pad)
    trainable, total = count_parameters(model)
    loggers = [JsonlLogger(run_dir / "metrics.jsonl", resume_step=_resume_step(run_dir, resume))]
    if settings.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    logger = MultiLogger(*loggers)
    trained_tokens = [0]

    def batch_fn(step: int, micro: int):
        batch = batches.batch((step - 1) * settings.grad_accumulation + micro)
        trained_tokens[0] += batch.target_tokens
        return (batch.src, batch.tgt_in), batch.tgt_out

    def loss_fn(m: nn.Module, inputs, targets) -> torch.Tensor:
        return translation_loss(m, *inputs, targets, ids.pad, settings.label_smoothing)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        result = evaluate_loss(m, val_split, ids, settings.max_tokens)
        return {"val_loss": result["loss"], "val_ppl": result["ppl"]}

    # Batches vary in size: the live log's tokens/s uses the mean batch; the summary's
    # target_tokens_per_s counts the tokens actually trained.
    mean_tokens = batches.target_tokens / len(batches) * settings.grad_accumulation
    began = time.perf_counter()
    try:
        result = train(model, method, batch_fn=batch_fn, loss_fn=loss_fn, eval_fn=eval_fn,
                       settings=loop_settings, run_dir=run_dir, logger=logger,
                       checkpoint_settings=asdict(settings), resume=resume,
                       tokens_per_step=round(mean_tokens), progress=progress,
                       lr_lambda=mt_lr_lambda(method, total_steps, settings.warmup_steps),
                       build_optimizer=optimizer_builder(settings))
    finally:
        logger.close()
    train_seconds = sum(result.step_times)
    summary = {
        "method": settings.method, "model": settings.model, "settings": asdict(settings),
        "trainable_params": trainable, "total_params": total,
        "grad_optimizer_bytes": result.grad_optimizer_bytes,
        "step_time_s": result.median_step_time, "final_step": result.final_step,
        "num_training_steps": total_steps, "batches_per_epoch": len(batches),
        "epochs_trained": result.final_step * settings.grad_accumulation / len(batches),
        "target_tokens_per_s": trained_tokens[0] / train_seconds if train_seconds else None,
        "epoch_time_s": (train_seconds / len(result.step_times) * len(batches)
                         / settings.grad_accumulation) if result.step_times else None,
        "vocab_size": data.vocab.vocab_size, "peak_lr": settings.peak_lr,
    }
    model.eval()
    val = evaluate_loss(model, val_split, ids, settings.max_tokens)
    test = evaluate_loss(model, data.splits["test"], ids, settings.max_tokens)
    decode_began = time.perf_counter()
    test_split = data.splits["test"]
    hypotheses = translate(model, test_split.source, data.vocab, beam_size=settings.beam_size,
                           alpha=settings.length_penalty, max_len_a=settings.max_len_a,
                           max_len_b=settings.max_len_b, batch_size=settings.decode_batch_size)
    bleu, signature = corpus_bleu(hypotheses, list(test_split.target_text))
    summary.update({
        "val_loss": val["loss"], "val_ppl": val["ppl"], "test_loss": test["loss"],
        "test_ppl": test["ppl"], "test_bleu": bleu, "bleu_signature": signature,
        "decoding": {"beam_size": settings.beam_size, "length_penalty": settings.length_penalty,
                     "max_len_a": settings.max_len_a, "max_len_b": settings.max_len_b,
                     "seconds": time.perf_counter() - decode_began},
        "wall_time_s": time.perf_counter() - began,
        "curve": [{"step": e["step"], "val_loss": e["val_loss"]} for e in result.evaluations],
        "examples": [{"source": test_split.source_text[i],
                      "reference": test_split.target_text[i], "hypothesis": hypotheses[i]}
                     for i in range(min(settings.num_examples, len(test_split)))],
    })
    atomic_write_json(run_dir / "summary.json", summary)
    return summary, model, method


# ---------------------------------------------------------------------- comparison
def run_compare(settings: MTSettings, methods: list[str], method_lr: dict[str, float],
                progress: bool = True) -> dict[str, Any]:
    """Train each method under the same settings; write ``results.json`` and the report."""
    from ..report import render

    model_builder(settings.model)
    out = Path(settings.output_dir)
    data = prepare_data(settings)
    d = settings.d_model
    results: dict[str, Any] = {
        "task": "mt",
        "title": f"{settings.model} Transformer (d_model {d}, {settings.num_layers}+"
                 f"{settings.num_layers} layers) on {data.name}, rank {settings.rank}",
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
        results["methods"][name] = summary
        atomic_write_json(out / "results.json", results)  # partial results survive a crash
    render(out)
    return results
