"""The paper's SST ablation on one task, everything else fixed (``sst ablate TASK``).

Each *variant* is one method plus option overrides on top of the same base settings: the
default SST (weighted sampler), the other samplers (uniform, sequential, top-r, the uniform
mix ``lam = 0.5``), sampled-only singular values, random initialisation, the default
(not enhanced) gradient, other iteration intervals T3 and other iterations per round T2,
and two references, full rank and ReLoRA*, for the gradient-norm comparison.

A *task runner* (:data:`TASK_RUNNERS`) trains one variant and returns a :class:`VariantRun`:
the final metric, the validation curve and the gradient-norm trace. The trace is the total
gradient norm before clipping that the training loop logs as ``grad_norm`` every
``log_every`` steps in ``metrics.jsonl``. Its Pearson correlation with full rank's trace (at
the steps both logged) is the paper's "SST's gradient norm tracks full rank" figure.

:func:`run_ablation` writes ``<output_dir>/ablation.json`` after every variant (partial
results survive a crash) and renders ``ablation.md`` and the plots
(:mod:`..report_ablate`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._util.atomic import atomic_write_json
from ..methods import SST_VARIANTS

__all__ = ["ABLATION_FILE", "TASK_RUNNERS", "AblationVariant", "VariantRun",
           "default_variants", "grad_norm_trace", "pearson", "run_ablation",
           "select_variants"]

ABLATION_FILE = "ablation.json"

# What each SST variant of the registry ablates (table grouping).
_VARIANT_GROUPS = {
    "sst-uniform": "sampler", "sst-sequential": "sampler", "sst-top-r": "sampler",
    "sst-mix": "sampler", "sst-sampled-s": "singular values", "sst-random-init": "init",
    "sst-default-grad": "gradient",
}


@dataclass
class AblationVariant:
    """One row of the ablation: ``method`` with ``options`` over the base settings."""

    label: str
    method: str
    group: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantRun:
    """What one variant measured."""

    metric: float
    curve: list[dict[str, float]]
    grad_norm: list[dict[str, float]]
    step_time_s: float
    trainable_params: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskMetric:
    """The final figure a task reports and which direction is better."""

    name: str
    higher_is_better: bool


# ---------------------------------------------------------------------- variants
def default_variants(iteration_intervals: list[int] = (), iterations_per_round: list[int] = (),
                     references: bool = True) -> list[AblationVariant]:
    """The paper's ablation: SST, each registered SST variant, T3 and T2 values, references.

    Args:
        iteration_intervals: extra T3 values (``sst`` with ``iteration_interval=T3``).
        iterations_per_round: extra T2 values (``sst`` with ``iterations_per_round=T2``).
        references: add ``full`` and ``relora`` (needed for the gradient-norm correlations).
    """
    variants = [AblationVariant("sst", "sst", "default (weighted)")]
    variants += [AblationVariant(name, name, _VARIANT_GROUPS.get(name, "variant"))
                 for name in SST_VARIANTS]
    variants += [AblationVariant(f"sst T3={t3}", "sst", "iteration interval T3",
                                 {"iteration_interval": int(t3)}) for t3 in iteration_intervals]
    variants += [AblationVariant(f"sst T2={t2}", "sst", "iterations per round T2",
                                 {"iterations_per_round": int(t2)})
                 for t2 in iterations_per_round]
    if references:
        variants += [AblationVariant("full", "full", "reference"),
                     AblationVariant("relora", "relora", "reference")]
    return variants


def select_variants(variants: list[AblationVariant], names: list[str] | None):
    """The variants whose label is in ``names`` (all when None), in ``variants`` order.

    Raises:
        ValueError: an unknown name, listing the labels allowed.
    """
    if not names:
        return list(variants)
    labels = [v.label for v in variants]
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; allowed: {labels}")
    return [v for v in variants if v.label in names]


# ---------------------------------------------------------------------- traces
def grad_norm_trace(run_dir: str | Path) -> list[dict[str, float]]:
    """``[{"step", "grad_norm"}, ...]`` from ``<run_dir>/metrics.jsonl`` (the loop's log)."""
    path = Path(run_dir) / "metrics.jsonl"
    trace = []
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "grad_norm" in record:
            # Non-finite norms are logged as text ("nan", "inf"); float() reads both.
            trace.append({"step": record["step"], "grad_norm": float(record["grad_norm"])})
    return trace


def pearson(a: list[float], b: list[float]) -> float | None:
    """Pearson correlation of two equally long series; None if undefined (constant/short)."""
    if len(a) != len(b):
        raise ValueError(f"series lengths differ: {len(a)} and {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return None
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else None


def trace_correlation(trace: list[dict[str, float]], reference: list[dict[str, float]]):
    """Pearson correlation of two grad-norm traces at the steps both logged."""
    ref = {p["step"]: p["grad_norm"] for p in reference}
    common = [p for p in trace if p["step"] in ref]
    return pearson([p["grad_norm"] for p in common], [ref[p["step"]] for p in common])


# ---------------------------------------------------------------------- task runners
def _method_options(base: dict[str, Any], variant: AblationVariant) -> dict[str, Any]:
    options = {**(base or {}), **variant.options}
    # A learning-rate re-warm-up needs every layer to change selection on the same step.
    if variant.method.startswith("sst") and options.get("restart_warmup_steps"):
        options.setdefault("stagger_resvd", False)
    return options


def _settings(settings_class, base: dict[str, Any], variant: AblationVariant, run_dir: Path):
    values = {**base, "method": variant.method, "output_dir": str(run_dir),
              "method_options": _method_options(base.get("method_options"), variant)}
    return settings_class.from_dict(values)


def _train_variant(task: str, settings_class: str, metric: str, extras: tuple[str, ...]):
    """A runner for a task whose ``run_train`` logs ``grad_norm`` through the training loop.

    Args:
        task: module under ``tasks`` with ``prepare_data`` and ``run_train(settings,
            progress=..., data=...)``.
        settings_class: name of its settings dataclass.
        metric: the summary key that is the variant's figure.
        extras: summary keys kept beside it.
    """
    def run(base, variant, run_dir, cache, progress) -> VariantRun:
        import importlib

        module = importlib.import_module(f"{__package__}.{task}")
        settings = _settings(getattr(module, settings_class), base, variant, run_dir)
        if task not in cache:  # the data are the same for every variant
            cache[task] = module.prepare_data(settings)
        summary = module.run_train(settings, progress=progress, data=cache[task])
        return VariantRun(summary[metric], summary["curve"], grad_norm_trace(run_dir),
                          summary["step_time_s"], summary["trainable_params"],
                          {key: summary[key] for key in extras})

    return run


_run_images = _train_variant("images", "ImagesSettings", "test_accuracy",
                             ("val_accuracy", "val_loss"))
_run_lm = _train_variant("lm", "LMSettings", "val_ppl", ("test_ppl", "val_loss"))
_run_mt = _train_variant("mt", "MTSettings", "test_bleu", ("val_ppl", "bleu_signature"))


def _run_graph(base, variant, run_dir, cache, progress) -> VariantRun:
    from . import graph

    settings = _settings(graph.GraphSettings, {"save_embeddings": False, **base}, variant,
                         run_dir)
    if "graph" not in cache:
        cache["graph"] = graph.load_data(settings.resolved())
    summary = graph.run_train(settings, data=cache["graph"], progress=progress)
    headline = graph.HEADLINE_METRIC[settings.task]
    # One point per evaluated epoch; "step" is the epoch (full-batch: one step per epoch).
    curve = [{"step": p["epoch"], "val_loss": p["val_loss"], "val_score": p["val_score"]}
             for p in summary["curve"]]
    trace = [{"step": p["epoch"], "grad_norm": p["grad_norm"]} for p in summary["curve"]]
    return VariantRun(summary["test"][headline], curve, trace, summary["step_time_s"],
                      summary["trainable_params"],
                      {"best_epoch": summary["best_epoch"], "val": summary["val"],
                       "test": summary["test"]})


RunFn = Callable[[dict, AblationVariant, Path, dict, bool], VariantRun]
TASK_RUNNERS: dict[str, tuple[RunFn, TaskMetric]] = {
    "images": (_run_images, TaskMetric("test accuracy", True)),
    "lm": (_run_lm, TaskMetric("validation perplexity", False)),
    "mt": (_run_mt, TaskMetric("test BLEU", True)),
    "graph": (_run_graph, TaskMetric("test F1 (NC) or ROC-AUC (LP)", True)),
}


# ---------------------------------------------------------------------- the ablation
def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


def run_ablation(task: str, settings: dict[str, Any], variants: list[AblationVariant],
                 output_dir: str | Path, progress: bool = True,
                 variant_lr: dict[str, float] | None = None) -> dict[str, Any]:
    """Train every variant of ``task`` under ``settings``; write ``ablation.json`` + report.

    Args:
        task: a key of :data:`TASK_RUNNERS`.
        settings: the task's settings (``LMSettings``/``MTSettings``/``ImagesSettings``
            fields) shared by every variant; ``method`` and ``output_dir`` are set per
            variant and ``method_options`` is merged with the variant's options.
        variants: from :func:`default_variants` / :func:`select_variants`.
        output_dir: one sub-folder per variant plus the ablation files.
        variant_lr: learning rate by variant label or, failing that, method name (e.g. the
            references ``full`` and ``relora`` at their own tuned rates); others use
            ``settings["lr"]``.

    Raises:
        ValueError: unknown task (listing the tasks), empty variant list, or a bad setting
            (from the task's settings class).
    """
    if task not in TASK_RUNNERS:
        raise ValueError(f"unknown ablation task {task!r}; allowed: {sorted(TASK_RUNNERS)}")
    if not variants:
        raise ValueError("the ablation needs at least one variant")
    run_fn, metric = TASK_RUNNERS[task]
    variant_lr = dict(variant_lr or {})
    known = {v.label for v in variants} | {v.method for v in variants}
    if set(variant_lr) - known:
        raise ValueError(f"variant_lr names {sorted(set(variant_lr) - known)} match no variant "
                         f"label or method; allowed: {sorted(known)}")
    base = {k: v for k, v in settings.items() if k not in ("method", "output_dir")}
    out = Path(output_dir)
    results: dict[str, Any] = {
        "task": task, "metric": metric.name, "higher_is_better": metric.higher_is_better,
        "settings": {**base, "variant_lr": variant_lr, "threads": torch.get_num_threads()},
        "variants": {}, "order": [],  # the JSON is key-sorted; "order" keeps run order
    }
    cache: dict[str, Any] = {}
    for variant in variants:
        print(f"== ablation {task}: {variant.label} ==", flush=True)
        lr = variant_lr.get(variant.label, variant_lr.get(variant.method))
        run_base = base if lr is None else {**base, "lr": lr}
        run = run_fn(run_base, variant, out / _folder_name(variant.label), cache, progress)
        results["variants"][variant.label] = {
            "method": variant.method, "group": variant.group, "options": variant.options,
            "lr": run_base.get("lr"),
            "metric": run.metric, "step_time_s": run.step_time_s,
            "trainable_params": run.trainable_params, "curve": run.curve,
            "grad_norm": run.grad_norm, **run.extra,
        }
        results["order"].append(variant.label)
        _add_correlations(results)
        atomic_write_json(out / ABLATION_FILE, results)
    from ..report import render

    render(out)
    return results


def _add_correlations(results: dict[str, Any]) -> None:
    """Each variant's grad-norm correlation with full rank's (None without full rank)."""
    full = results["variants"].get("full")
    for entry in results["variants"].values():
        entry["grad_norm_corr_full"] = (trace_correlation(entry["grad_norm"], full["grad_norm"])
                                        if full else None)


def settings_with_overrides(settings: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``settings`` updated by ``key=value`` strings (values parsed as JSON, else text).

    ``method_options.KEY=value`` sets one method option.
    """
    out = {**settings, "method_options": dict(settings.get("method_options") or {})}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r} must look like key=value (e.g. epochs=2)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        key = key.strip()
        if key.startswith("method_options."):
            out["method_options"][key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return out

