"""The Task protocol: what the engine needs to know of a task, and nothing else.

A task (``lm``, ``mt``, ``graph``, ``images``) is one registered object (see
:mod:`.registry`). The engine (``training.runner``, ``training.compare``,
``experiments.ablation``) and the CLI talk to it only through this protocol::

    data = task.prepare_data(settings)              # once per task.data_key(settings)
    model = task.build_model(settings, data)        # dense, seeded
    batches = task.batches(settings, data)          # steps, batch_fn(step, micro), tokens
    ... the loop trains with task.loss(settings, data) and task.evaluator(settings, data)
    figures = task.finish(settings, data, model, method, result)   # final whole-split figures

It is modelled on torchtune's recipe protocol and peft's method registry: a task holds no
state; settings and data are passed in.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Headline:
    """The task's one figure for tables and ablations, and which direction is better."""

    key: str               # summary key, e.g. "val_ppl"
    label: str             # e.g. "validation perplexity"
    higher_is_better: bool

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "higher_is_better": self.higher_is_better}


@dataclass
class Batches:
    """How a run gets its training batches.

    ``batch_fn(step, micro) -> (inputs, targets)`` must depend only on its arguments (exact
    resume); ``steps`` is the number of optimizer steps; ``tokens_per_step`` feeds the
    tokens/s figure; ``info`` is merged into the summary (e.g. batches per epoch).
    ``rows``: the number of rows (dim 0 of every input and target tensor) of every
    micro-batch, which DDP splits across ranks (:func:`~..training.distributed.shard_rows`).
    A task whose batches vary in size or are not split by rows (token-budget batches,
    full-batch graph training) gives ``shard(inputs, targets, world) -> (inputs, targets)``
    instead: rank ``world.rank``'s part of a global micro-batch, with a loss that the DDP
    mean over ranks turns into the single-process loss; ``min_rows`` is then the fewest
    parts any micro-batch can be split into (each rank needs one).
    """

    steps: int
    batch_fn: Callable[[int, int], tuple[Any, Any]]
    tokens_per_step: int
    grad_accumulation: int = 1
    info: dict[str, Any] | None = None
    counters: dict[str, Any] = field(default_factory=dict)  # batch_fn's tallies
    #: An object with ``state_dict``/``load_state_dict`` that batch_fn depends on beyond
    #: the step (e.g. a sampler's RNG); the loop checkpoints it.
    state: Any = None
    rows: int | None = None
    shard: Callable[[Any, Any, Any], tuple[Any, Any]] | None = None
    min_rows: int | None = None


class Task(Protocol):
    """What every task object provides (see the module docstring)."""

    name: str
    description: str
    settings_class: type
    default_methods: tuple[str, ...]

    def headline(self, settings) -> Headline: ...

    def prepare_data(self, settings) -> Any: ...

    def data_key(self, settings) -> Hashable: ...

    def build_model(self, settings, data) -> nn.Module: ...

    def default_targets(self, settings, model: nn.Module) -> dict[str, Any]: ...

    def batches(self, settings, data) -> Batches: ...

    def loss(self, settings, data) -> Callable[[nn.Module, Any, Any], torch.Tensor]: ...

    def evaluator(self, settings, data) -> Callable[[nn.Module], dict[str, float]]: ...

    def finish(self, settings, data, model: nn.Module, method, result,
               batches: Batches) -> dict[str, Any]: ...

    def summary_line(self, summary: dict[str, Any]) -> str: ...

    def title(self, settings, data, seeds: list[int]) -> str: ...


class TaskBase:
    """Defaults shared by the tasks; each task overrides what it does differently."""

    name = ""
    description = ""
    settings_class: type = object
    default_methods: tuple[str, ...] = ("full", "lora", "relora", "galore", "sst")
    #: Summary keys averaged over seeds by ``sst compare`` (mean and ``*_std``).
    seed_metrics: tuple[str, ...] = ()
    #: Summary keys an ablation keeps beside the headline figure.
    ablation_extras: tuple[str, ...] = ()
    #: ``sst train``'s one-line result, formatted with the summary's keys.
    summary_format = ""

    def data_key(self, settings) -> Hashable:
        """The data do not depend on the seed unless a task says so."""
        return None

    def resolve(self, settings):
        """``settings`` with every task-chosen default filled in (graph: HyboNet's values)."""
        return settings

    def to_device(self, data, device, dtype=None):
        """``data`` with its tensors on ``device`` (floating ones cast to ``dtype`` if given;
        a no-op on the CPU in fp32)."""
        from ..training.device import move_to

        return move_to(data, device, dtype)

    def check(self, settings) -> None:
        """Refuse bad settings before any data or file is touched (default: nothing more)."""

    def loop_settings(self, settings, batches: Batches):
        """The loop's settings for ``batches`` (override to change lr or warm-up)."""
        from ..training.runner import loop_settings

        return loop_settings(settings, batches.steps, batches.grad_accumulation)

    def default_targets(self, settings, model: nn.Module) -> dict[str, Any]:
        return {}

    def optimizer_builder(self, settings):
        """The loop's ``build_optimizer`` hook; None: the method's own optimizer."""
        return None

    def lr_lambda(self, settings, method, steps: int):
        """The loop's learning-rate multiplier; None: warm-up cosine times restarts."""
        return None

    def compare_extras(self, settings, data, outcome, first_seed: bool) -> dict:
        """Figures ``sst compare`` adds to a method's entry: the first seed's weight spectra."""
        from ..training.compare import weight_spectra

        return {"spectra": weight_spectra(outcome.model, outcome.method)} if first_seed else {}

    def results_extras(self, settings, data) -> dict[str, Any]:
        """Top-level keys ``sst compare`` adds to ``results.json`` (e.g. data notes)."""
        return {}

    def aggregate(self, runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
        """A method's ``results.json`` entry from its per-seed summaries.

        The first seed's summary, with every :attr:`seed_metrics` key replaced by its mean
        over seeds and a ``*_std`` (sample std; 0 for one seed) beside it, and the per-seed
        figures under ``"seeds"``.
        """
        entry = dict(runs[0])
        entry["seeds"] = [{"seed": s, **{k: r[k] for k in self.seed_metrics}}
                          for s, r in zip(seeds, runs)]
        for key in self.seed_metrics:
            values = [r[key] for r in runs]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        return entry

    def ablation_record(self, summary: dict[str, Any], run_dir) -> dict[str, Any]:
        """``{"curve", "grad_norm", "extra"}`` for one ablation variant (the loop's log)."""
        from ..training.loggers import metric_trace

        return {"curve": summary["curve"], "grad_norm": metric_trace(run_dir, "grad_norm"),
                "extra": {k: summary[k] for k in self.ablation_extras if k in summary}}

    def summary_line(self, summary: dict[str, Any]) -> str:
        return self.summary_format.format(**summary)
