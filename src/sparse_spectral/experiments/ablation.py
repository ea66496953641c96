"""The paper's SST ablation on one task, everything else fixed (``sst ablate TASK``).

Each *variant* is one method plus option overrides on top of the same base settings: the
default SST (weighted sampler), the other samplers (uniform, sequential, top-r, the uniform
mix ``lam = 0.5``), sampled-only singular values, random initialisation, the default
(not enhanced) gradient, other iteration intervals T3 and other iterations per round T2,
and two references, full rank and ReLoRA*, for the gradient-norm comparison.

Generic over the task registry: every variant trains through the engine
(:func:`..training.runner.train_run`) on data prepared once; the variant's figure is the
task's headline metric, its record the task's ``ablation_record`` (validation curve and the
gradient-norm trace: the total gradient norm before clipping that the loop logs as
``grad_norm``). Its Pearson correlation with full rank's trace (at the steps both logged) is
the paper's "SST's gradient norm tracks full rank" figure.

:func:`run_ablation` writes ``<output_dir>/ablation.json`` after every variant (partial
results survive a crash); ``report.render`` turns it into ``ablation.md`` and the plots.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._util.atomic import atomic_write_json
from ..methods import SST_VARIANTS, method_config_fields
from ..training.config import to_flat_dict
from ..training.distributed import is_main
from ..training.runner import check_choices, train_run, with_run

__all__ = ["ABLATION_FILE", "AblationVariant", "VariantRun", "default_variants", "pearson",
           "run_ablation", "select_variants", "trace_correlation"]

ABLATION_FILE = "ablation.json"

# The table group of an SST variant, by the config field its preset changes (the variants
# themselves are the registry's: methods.SST_VARIANTS).
_GROUP_OF_FIELD = {
    "sampler": "sampler", "lam": "sampler", "update_all_singular_values": "singular values",
    "init": "init", "enhanced_gradient": "gradient",
}


def _group(preset: dict[str, Any]) -> str:
    groups = {_GROUP_OF_FIELD.get(name, "variant") for name in preset}
    return groups.pop() if len(groups) == 1 else "variant"


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
    variants += [AblationVariant(name, name, _group(preset))
                 for name, preset in SST_VARIANTS.items()]
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


# ---------------------------------------------------------------------- one variant
def variant_settings(settings, variant: AblationVariant, run_dir: Path, lr: float | None):
    """``settings`` with the variant's method and options, its own folder and lr."""
    options = {**settings.method.options, **variant.options}
    # SST's T3 is the run's refresh interval (the T3 variants set it).
    interval = options.pop("iteration_interval", settings.method.interval)
    # A learning-rate re-warm-up needs every layer to change selection on the same step.
    if options.get("restart_warmup_steps") and "stagger_resvd" in method_config_fields(
            variant.method):
        options.setdefault("stagger_resvd", False)
    changes = {"method": variant.method, "options": options, "interval": interval,
               "output_dir": run_dir}
    return with_run(settings, **changes, **({} if lr is None else {"lr": lr}))


def headline_value(summary: dict[str, Any], key: str) -> float:
    """``summary[key]``, or ``summary["test"]["roc"]`` for ``key = "test_roc"`` (graph)."""
    if key in summary:
        return summary[key]
    split, _, name = key.partition("_")
    return summary[split][name]


def run_variant(task, settings, data, progress: bool) -> VariantRun:
    """Train one variant; its headline figure, curve, gradient-norm trace and extras."""
    summary = train_run(task, settings, data=data, progress=progress).summary
    record = task.ablation_record(summary, settings.output.output_dir)
    return VariantRun(headline_value(summary, task.headline(settings).key), record["curve"],
                      record["grad_norm"], summary["step_time_s"],
                      summary["trainable_params"], record["extra"])


# ---------------------------------------------------------------------- the ablation
def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


def variant_runs(task, settings, variants: list[AblationVariant], output_dir: str | Path,
                 variant_lr: dict[str, float] | None = None) -> list:
    """Every variant's run settings (:func:`variant_settings`), checked before any trains.

    Raises:
        ValueError: a shared method option no variant takes, or a value a variant's method
            config refuses.
    """
    variant_lr = variant_lr or {}
    runs = [variant_settings(settings, v, Path(output_dir) / _folder_name(v.label),
                             variant_lr.get(v.label, variant_lr.get(v.method)))
            for v in variants]
    check_choices(task, settings, sorted({v.method for v in variants}), explicit=set())
    for run in runs:
        check_choices(task, run, [run.method.name], explicit=set())
    return runs


def run_ablation(task, settings, variants: list[AblationVariant], output_dir: str | Path,
                 progress: bool = True,
                 variant_lr: dict[str, float] | None = None) -> dict[str, Any]:
    """Train every variant of ``task`` under ``settings``; write ``ablation.json``.

    Args:
        task: a registered task (:func:`..tasks.registry.get_task`).
        settings: the task's settings shared by every variant; the method, its options
            (merged with the variant's) and the run folder are set per variant.
        variants: from :func:`default_variants` / :func:`select_variants`.
        output_dir: one sub-folder per variant plus the ablation file.
        variant_lr: learning rate by variant label or, failing that, method name (e.g. the
            references ``full`` and ``relora`` at their own tuned rates); others use
            ``settings.optim.lr``.

    Raises:
        ValueError: an empty variant list, or a variant_lr name matching no variant.
    """
    if not variants:
        raise ValueError("the ablation needs at least one variant")
    variant_lr = dict(variant_lr or {})
    known = {v.label for v in variants} | {v.method for v in variants}
    if set(variant_lr) - known:
        raise ValueError(f"variant_lr names {sorted(set(variant_lr) - known)} match no variant "
                         f"label or method; allowed: {sorted(known)}")
    task.check(settings)
    out = Path(output_dir)
    runs = variant_runs(task, settings, variants, out, variant_lr)
    headline = task.headline(settings)
    base = {k: v for k, v in to_flat_dict(settings).items() if k not in ("method", "output_dir")}
    results: dict[str, Any] = {
        "task": task.name, "metric": headline.label, "headline": headline.to_dict(),
        "higher_is_better": headline.higher_is_better,
        "settings": {**base, "variant_lr": variant_lr, "threads": torch.get_num_threads()},
        "variants": {}, "order": [],  # the JSON is key-sorted; "order" keeps run order
    }
    data = task.prepare_data(settings)  # the same for every variant
    for variant, run_settings in zip(variants, runs):
        if is_main():  # under torchrun: rank 0 prints and writes
            print(f"== ablation {task.name}: {variant.label} ==", flush=True)
        run = run_variant(task, run_settings, data, progress)
        results["variants"][variant.label] = {
            "method": variant.method, "group": variant.group, "options": variant.options,
            "lr": run_settings.optim.lr,
            "metric": run.metric, "step_time_s": run.step_time_s,
            "trainable_params": run.trainable_params, "curve": run.curve,
            "grad_norm": run.grad_norm, **run.extra,
        }
        results["order"].append(variant.label)
        _add_correlations(results)
        if is_main():
            atomic_write_json(out / ABLATION_FILE, results)
    return results


def _add_correlations(results: dict[str, Any]) -> None:
    """Each variant's grad-norm correlation with full rank's (None without full rank)."""
    full = results["variants"].get("full")
    for entry in results["variants"].values():
        entry["grad_norm_corr_full"] = (trace_correlation(entry["grad_norm"], full["grad_norm"])
                                        if full else None)
