"""Machine translation on Multi30k (German to English by default), trained by any method.

The ``mt`` task (:data:`MT`); the engine writes its run folders (``summary.json`` adds test
BLEU with its sacreBLEU signature and translation examples) and ``results.json``.

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
contributes only its restart factor, ``method.restart_factor(t)``, which is 1 except
during the re-warm-ups after ReLoRA*/SST restarts when ``restart_warmup_steps > 0``. The
product is the multiplier.

Loss: token cross-entropy with label smoothing (0.1 by default), padding ignored, mean over
the target tokens of a batch. Validation loss and perplexity use plain NLL (no smoothing).
Under DDP and FSDP2 each rank trains a contiguous share of every batch's sentences, its
mean loss weighted by its share of the batch's target tokens (:class:`WeightedTargets`), so
the run trains on the single-process loss; every rank evaluates and decodes the whole
splits. FSDP2 takes the Euclidean model only.
The final model (no checkpoint selection, as in HyboNet) is decoded on the test set with
beam search (beam 4, GNMT length penalty alpha 1, max length ``1.2 |src| + 10``; reference
section 3.7) and scored with sacreBLEU on detokenised, cased text (its default 13a
tokenisation); the signature is stored with the score.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._util.fields import Checked
from ..hyperbolic.optim import RIEMANNIAN_KINDS
from ..training.config import (
    EvalSettings,
    MethodChoice,
    OptimSettings,
    OutputSettings,
    TaskSettings,
    _help,
)
from .base import Batches, Headline, TaskBase

MODEL_FAMILIES = ("euclidean", "hyperbolic")
SCHEDULES = ("inverse_sqrt", "noam")
# dropout=None: the Euclidean default, and HyboNet's IWSLT `-dropout 0` (run.iwslt.64.sh).
DEFAULT_DROPOUT = {"euclidean": 0.1, "hyperbolic": 0.0}
# attention_dropout=None on the hyperbolic model: HyboNet's `-attention_dropout 0.1`.
HYBONET_ATTENTION_DROPOUT = 0.1


@dataclass
class TranslationSchedule(Checked):
    """Inverse-sqrt warm-up/decay (or Noam's), over steps or epochs."""

    kind: str = field(default="inverse_sqrt", metadata=_help(
        "inverse_sqrt (lr = peak) or noam (lr = Noam's factor)", flag="schedule"))
    num_training_steps: int = field(default=2000, metadata=_help("optimizer steps"))
    warmup_steps: int = field(default=400, metadata=_help("linear warm-up steps"))
    epochs: float | None = field(default=None, metadata=_help(
        "train this many epochs (overrides num_training_steps)"))

    def validate(self):
        for name in ("warmup_steps", "num_training_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule={self.kind!r} is unknown; allowed: {list(SCHEDULES)}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r} must be > 0 (or None to use "
                             f"num_training_steps)")


@dataclass
class MTSettings(TaskSettings):
    """Everything that defines a translation run (one flag per field)."""

    # data
    data_dir: str | None = field(default=None, metadata=_help(
        "data directory holding multi30k/ (default $SST_DATA_DIR)"))
    source_lang: str = field(default="de", metadata=_help("de or en"))
    target_lang: str = field(default="en", metadata=_help("en or de"))
    vocab_size: int = field(default=4000, metadata=_help("joint BPE vocabulary size"))
    train_pairs: int | None = field(default=None, metadata=_help(
        "use only the first N training pairs"))
    eval_pairs: int | None = field(default=None, metadata=_help(
        "use only the first N validation and test pairs"))
    max_tokens: int = field(default=4096, metadata=_help("padded tokens per batch and side"))
    # model
    model: str = field(default="euclidean", metadata=_help(
        "euclidean or hyperbolic (HyboNet's Lorentz Transformer)"))
    d_model: int = field(default=64, metadata=_help("model width"))
    num_heads: int = field(default=4, metadata=_help("attention heads"))
    num_layers: int = field(default=3, metadata=_help("encoder layers = decoder layers"))
    d_ff: int | None = field(default=None, metadata=_help(
        "feed-forward width (default 4 * d_model)"))
    dropout: float | None = field(default=None, metadata=_help(
        "default: 0.1 (euclidean), 0.0 (hyperbolic, HyboNet's IWSLT run)"))
    attention_dropout: float | None = field(default=None, metadata=_help(
        "hyperbolic only: dropout on the Q/K/V inputs (default 0.1, HyboNet's)"))
    tie_embeddings: bool | None = field(default=None, metadata=_help(
        "share target embedding and output table (default: true for euclidean, false for "
        "hyperbolic as HyboNet)"))
    riemannian: str = field(default="hybonet", metadata=_help(
        "hyperbolic only: Riemannian Adam of the manifold tables, hybonet or geoopt"))
    # training
    grad_accumulation: int = field(default=1, metadata=_help("micro-batches per step"))
    label_smoothing: float = field(default=0.1, metadata=_help("training label smoothing"))
    # decoding and evaluation
    beam_size: int = field(default=4, metadata=_help("test decoding beam (1: greedy)"))
    length_penalty: float = field(default=1.0, metadata=_help("GNMT length-penalty alpha"))
    max_len_a: float = field(default=1.2, metadata=_help("max length a |src| + b: a"))
    max_len_b: float = field(default=10.0, metadata=_help("max length a |src| + b: b"))
    decode_batch_size: int = field(default=200, metadata=_help("sentences per decoding batch"))
    num_examples: int = field(default=5, metadata=_help("test translations kept in the summary"))
    method: MethodChoice = field(default_factory=lambda: MethodChoice(rank=8))
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(lr=2e-3))
    schedule: TranslationSchedule = field(default_factory=TranslationSchedule)
    eval: EvalSettings = field(default_factory=lambda: EvalSettings(eval_every=200))
    output: OutputSettings = field(default_factory=lambda: OutputSettings(output_dir="runs/mt"))

    def validate(self):
        super().validate()
        for name in ("vocab_size", "max_tokens", "d_model", "num_heads", "num_layers",
                     "grad_accumulation", "beam_size", "decode_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")
        for name in ("train_pairs", "eval_pairs", "d_ff"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name}={value!r} must be None or an int >= 1")
        if self.model not in MODEL_FAMILIES:
            raise ValueError(f"model={self.model!r} is unknown; allowed: {list(MODEL_FAMILIES)}")
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
        lr, warmup = self.optim.lr, self.schedule.warmup_steps
        return lr * (self.d_model * warmup) ** -0.5 if self.schedule.kind == "noam" else lr


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


def mt_lr_lambda(method, warmup_steps: int) -> Callable[[int], float]:
    """Inverse-sqrt warm-up/decay times the method's restart factor (module docstring)."""
    base = inverse_sqrt_lambda(warmup_steps)
    return lambda t: base(t) * method.restart_factor(t)


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


# ---------------------------------------------------------------------- loss and evaluation
class WeightedTargets(NamedTuple):
    """One rank's targets under DDP and the weight of its mean token loss.

    ``weight = ranks * rank_tokens / batch_tokens``
    (:func:`~..data.mt_batching.sentence_share`): DDP's mean over the ranks of ``weight``
    times each rank's mean then is the whole batch's mean token loss, as one process
    computes it, although the ranks train different numbers of tokens.
    """

    tokens: torch.Tensor  # (b, t) next-token targets
    weight: float


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
    device = next(model.parameters()).device  # batches are built on the CPU
    for chosen in token_batches([len(s) for s in split.source], [len(t) for t in split.target],
                                max_tokens):
        batch = collate(split.source, split.target, chosen, ids)
        total += float(translation_loss(model, batch.src.to(device), batch.tgt_in.to(device),
                                        batch.tgt_out.to(device), ids.pad, reduction="sum"))
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
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(sources)
    try:
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            src = pad_rows([np.append(sources[i], vocab.eos_id) for i in chosen],
                           vocab.pad_id).to(device)
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


# ---------------------------------------------------------------------- the task
class Translation(TaskBase):
    """``sst train|compare|ablate mt``: Multi30k, Euclidean or Lorentz Transformers."""

    name = "mt"
    description = "Multi30k translation, Euclidean or hyperbolic (HyboNet) Transformer"
    settings_class = MTSettings
    default_methods = ("full", "lora", "relora", "sst")
    seed_metrics = ("val_loss", "val_ppl", "test_loss", "test_ppl", "test_bleu")
    ablation_extras = ("val_ppl", "bleu_signature")
    summary_format = "test BLEU {test_bleu:.2f} ({bleu_signature}), val ppl {val_ppl:.3f}"

    def headline(self, settings) -> Headline:
        return Headline("test_bleu", "test BLEU", higher_is_better=True)

    def check(self, settings: MTSettings) -> None:
        model_builder(settings.model)  # fail on the model family before touching data
        if settings.model == "hyperbolic" and settings.runtime.parallel == "fsdp2":
            # fully_shard refuses 0-d parameters (the Lorentz layers' learned scales and the
            # curvature), and the manifold tables' Riemannian Adam is untested on shards.
            raise ValueError("parallel='fsdp2' is not supported by model='hyperbolic' (FSDP2 "
                             "cannot shard its scalar parameters); allowed: auto, ddp, or "
                             "fsdp2 with model='euclidean'")

    prepare_data = staticmethod(prepare_data)

    def batches(self, settings: MTSettings, data: MTData) -> Batches:
        from ..data.mt_batching import EpochBatches, sentence_share

        split, ids = data.splits["train"], data.ids
        epochs = EpochBatches(split.source, split.target, ids, settings.max_tokens, settings.seed)
        accumulation = settings.grad_accumulation
        counters = {"target_tokens": 0}
        steps = settings.schedule.num_training_steps
        if settings.schedule.epochs is not None:
            steps = max(1, math.ceil(settings.schedule.epochs * len(epochs) / accumulation))

        def batch_fn(step: int, micro: int):
            batch = epochs.batch((step - 1) * accumulation + micro)
            counters["target_tokens"] += batch.target_tokens
            return (batch.src, batch.tgt_in), batch.tgt_out

        def shard(inputs, targets, world):
            """Under DDP: this rank's contiguous share of the sentences, weighted."""
            src, tgt_in, tgt_out, weight = sentence_share(*inputs, targets, ids.pad,
                                                          world.rank, world.size)
            return (src, tgt_in), WeightedTargets(tgt_out, weight)

        # Batches vary in size: the live log's tokens/s uses the mean batch; the summary's
        # target_tokens_per_s counts the tokens actually trained (``counters``).
        mean_tokens = epochs.target_tokens / len(epochs) * accumulation
        return Batches(steps, batch_fn, round(mean_tokens), accumulation,
                       info={"batches_per_epoch": len(epochs)}, counters=counters,
                       shard=shard, min_rows=min(len(b) for b in epochs.batches))

    def loop_settings(self, settings: MTSettings, batches: Batches):
        from ..training.runner import loop_settings

        return loop_settings(settings, batches.steps, batches.grad_accumulation,
                             lr=settings.peak_lr)

    def build_model(self, settings: MTSettings, data: MTData) -> nn.Module:
        return model_builder(settings.model)(settings, data.vocab.vocab_size, data.ids.pad)

    def lr_lambda(self, settings: MTSettings, method, steps: int):
        return mt_lr_lambda(method, settings.schedule.warmup_steps)

    optimizer_builder = staticmethod(lambda settings: optimizer_builder(settings))

    def loss(self, settings: MTSettings, data: MTData):
        pad, smoothing = data.ids.pad, settings.label_smoothing

        def loss_fn(model: nn.Module, inputs, targets) -> torch.Tensor:
            if isinstance(targets, WeightedTargets):  # a rank's share under DDP
                return targets.weight * translation_loss(model, *inputs, targets.tokens, pad,
                                                         smoothing)
            return translation_loss(model, *inputs, targets, pad, smoothing)

        return loss_fn

    def evaluator(self, settings: MTSettings, data: MTData):
        def evaluate(model: nn.Module) -> dict[str, float]:
            result = evaluate_loss(model, data.splits["validation"], data.ids,
                                   settings.max_tokens)
            return {"val_loss": result["loss"], "val_ppl": result["ppl"]}

        return evaluate

    def finish(self, settings: MTSettings, data: MTData, model, method, result,
               batches: Batches) -> dict:
        per_epoch, accumulation = batches.info["batches_per_epoch"], batches.grad_accumulation
        seconds = sum(result.step_times)
        figures = {
            "model": settings.model,
            "epochs_trained": result.final_step * accumulation / per_epoch,
            "target_tokens_per_s": (batches.counters["target_tokens"] / seconds
                                    if seconds else None),
            "epoch_time_s": (seconds / len(result.step_times) * per_epoch / accumulation
                             if result.step_times else None),
            "vocab_size": data.vocab.vocab_size, "peak_lr": settings.peak_lr,
        }
        model.eval()
        val = evaluate_loss(model, data.splits["validation"], data.ids, settings.max_tokens)
        test = evaluate_loss(model, data.splits["test"], data.ids, settings.max_tokens)
        decode_began = time.perf_counter()
        test_split = data.splits["test"]
        hypotheses = translate(model, test_split.source, data.vocab,
                               beam_size=settings.beam_size, alpha=settings.length_penalty,
                               max_len_a=settings.max_len_a, max_len_b=settings.max_len_b,
                               batch_size=settings.decode_batch_size)
        bleu, signature = corpus_bleu(hypotheses, list(test_split.target_text))
        figures.update({
            "val_loss": val["loss"], "val_ppl": val["ppl"], "test_loss": test["loss"],
            "test_ppl": test["ppl"], "test_bleu": bleu, "bleu_signature": signature,
            "decoding": {"beam_size": settings.beam_size,
                         "length_penalty": settings.length_penalty,
                         "max_len_a": settings.max_len_a, "max_len_b": settings.max_len_b,
                         "seconds": time.perf_counter() - decode_began},
            "examples": [{"source": test_split.source_text[i],
                          "reference": test_split.target_text[i], "hypothesis": hypotheses[i]}
                         for i in range(min(settings.num_examples, len(test_split)))],
        })
        return figures

    def title(self, settings: MTSettings, data: MTData, seeds: list[int]) -> str:
        d, layers = settings.d_model, settings.num_layers
        return (f"{settings.model} Transformer (d_model {d}, {layers}+{layers} layers) on "
                f"{data.name}, rank {settings.method.rank}")



MT = Translation()
