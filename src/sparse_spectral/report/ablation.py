"""The SST ablation report (``sst ablate TASK``) from its ``ablation.json``.

Schema (written by :func:`sparse_spectral.tasks.ablate.run_ablation`)::

    {"task": str, "metric": str, "higher_is_better": bool, "settings": {...},
     "variants": {"<label>": {
         "method": str, "group": str, "options": {...},
         "lr": float | null,                   # the variant's learning rate
         "metric": float,                      # the task's final figure
         "step_time_s": float, "trainable_params": int,
         "curve": [{"step": int, "val_loss": float, ...}, ...],
         "grad_norm": [{"step": int, "grad_norm": float}, ...],
         "grad_norm_corr_full": float | null}, ...},
     "order": [labels in run order]}

Writes ``ablation.md`` (one table: group, variant, options, metric, difference from the
default SST, step time, grad-norm correlation with full rank), ``ablation.png`` (the metric
per variant) and ``grad_norm.png`` (the traces of full rank, SST and ReLoRA*).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import display, is_number, read_json, render_report
from .markdown import markdown_table, number_text, report_markdown
from .plots import colors, new_figure, no_data

__all__ = ["ablation_markdown", "ablation_table", "load_ablation", "plot_ablation",
           "plot_grad_norms", "render_ablation_report", "variant_labels"]

ABLATION_FILE = "ablation.json"
REPORT_FILE = "ablation.md"
PLOT_FILES = {"metric": "ablation.png", "grad_norm": "grad_norm.png"}
_TRACED = ("full", "sst", "relora")


def load_ablation(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``<directory>/ablation.json``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid JSON or a missing/ill-typed key (naming the path and the key).
    """
    path = Path(directory) / ABLATION_FILE
    data = read_json(path, "run `sst ablate TASK` to create it")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object, got {data!r}")
    for key in ("task", "metric", "higher_is_better", "variants"):
        if key not in data:
            raise ValueError(f"{path}: the top level is missing key {key!r}")
    if not isinstance(data["variants"], dict) or not data["variants"]:
        raise ValueError(f"{path}: 'variants' must be a non-empty object")
    for label, entry in data["variants"].items():
        for key in ("method", "group", "metric", "grad_norm"):
            if key not in entry:
                raise ValueError(f"{path}: variants[{label!r}] is missing key {key!r}")
        if not is_number(entry["metric"]):
            raise ValueError(f"{path}: variants[{label!r}]['metric'] must be a number, got "
                             f"{entry['metric']!r}")
    return data


def variant_labels(data: Mapping[str, Any]) -> list[str]:
    """Labels in run order (``"order"``), then any others in file order."""
    order = [label for label in data.get("order") or [] if label in data["variants"]]
    return order + [label for label in data["variants"] if label not in order]


def ablation_table(data: Mapping[str, Any]) -> str:
    """Markdown table, one row per variant in run order.

    Columns: group | variant | method and options | learning rate | metric | difference
    from ``sst`` (sign: positive = better) | step time (ms) | grad-norm correlation with
    full rank.
    """
    variants = data["variants"]
    sst = variants.get("sst", {}).get("metric")
    sign = 1.0 if data["higher_is_better"] else -1.0
    header = ["group", "variant", "method and options", "lr", data["metric"],
              "better than SST by", "step time (ms)", "grad-norm corr. with full"]
    rows = []
    for label in variant_labels(data):
        e = variants[label]
        options = ", ".join(f"{k}={v}" for k, v in (e.get("options") or {}).items())
        method = e["method"] + (f" ({options})" if options else "")
        diff = (sign * (e["metric"] - sst)
                if is_number(sst) and label != "sst" and math.isfinite(sst) else None)
        step = e.get("step_time_s")
        lr = e.get("lr")
        rows.append([e["group"], label, method, f"{lr:g}" if is_number(lr) else "-",
                     number_text(e["metric"], 4), number_text(diff, 4, signed=True),
                     f"{1000 * step:.1f}" if is_number(step) else "-",
                     number_text(e.get("grad_norm_corr_full"), 3)])
    return "\n".join(markdown_table(header, rows, left=3))


def _correlation_sentence(data: Mapping[str, Any]) -> str:
    variants = data["variants"]
    parts = [f"{display(name)} {variants[name]['grad_norm_corr_full']:.3f}"
             for name in ("sst", "relora")
             if is_number((variants.get(name) or {}).get("grad_norm_corr_full"))]
    if not parts:
        return ("Gradient-norm correlation with full rank: not computed (it needs the `full` "
                "variant, SST or ReLoRA*, and at least 3 steps that both logged).")
    return ("Pearson correlation of the total gradient norm (before clipping, at the logged "
            f"steps) with full rank's: {', '.join(parts)} (paper: SST 0.85, ReLoRA* 0.58).")


def ablation_markdown(data: Mapping[str, Any]) -> str:
    """The whole ``ablation.md`` text."""
    lead = (f"Metric: {data['metric']} ({'higher' if data['higher_is_better'] else 'lower'} "
            "is better). Every variant shares the settings below; only its method and "
            "options change.")
    return report_markdown(f"SST ablation on {data['task']}", lead, data.get("settings") or {},
                           ablation_table(data), [_correlation_sentence(data)], PLOT_FILES)


def plot_ablation(data: Mapping[str, Any]):
    """Horizontal bars: the metric of each variant, the default SST's as a dashed line."""
    variants = data["variants"]
    labels = [label for label in variant_labels(data)
              if math.isfinite(variants[label]["metric"])]
    fig = new_figure(width=6.4, height=max(3.0, 0.35 * len(labels) + 1.2))
    ax = fig.add_subplot()
    if not labels:
        no_data(ax, "no finite metric recorded")
        return fig
    values = [variants[label]["metric"] for label in labels]
    ax.barh(range(len(labels)), values, color="tab:blue")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    low, high = min(values), max(values)
    pad = 0.1 * (high - low) or 0.05 * abs(high) or 1.0
    ax.set_xlim(low - pad, high + pad)
    if "sst" in variants and math.isfinite(variants["sst"]["metric"]):
        ax.axvline(variants["sst"]["metric"], color="black", linestyle="--", linewidth=1)
    ax.set(xlabel=data["metric"], title=f"SST ablation ({data['task']})")
    ax.grid(alpha=0.3, axis="x")
    return fig


def plot_grad_norms(data: Mapping[str, Any]):
    """Total gradient norm against step for full rank, SST and ReLoRA* (log y)."""
    variants = data["variants"]
    names = [n for n in _TRACED if variants.get(n, {}).get("grad_norm")]
    fig = new_figure()
    ax = fig.add_subplot()
    if not names:
        no_data(ax, "no gradient-norm trace recorded")
        return fig
    palette = colors(list(_TRACED))
    for name in names:
        trace = [p for p in variants[name]["grad_norm"]
                 if math.isfinite(p["grad_norm"]) and p["grad_norm"] > 0]
        corr = variants[name].get("grad_norm_corr_full")
        suffix = f" (corr {corr:.2f})" if is_number(corr) and name != "full" else ""
        ax.plot([p["step"] for p in trace], [p["grad_norm"] for p in trace], linewidth=0.8,
                color=palette[name], label=display(name) + suffix)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="gradient norm (before clipping)", title="Gradient norm")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


_PLOTTERS = {"metric": plot_ablation, "grad_norm": plot_grad_norms}


def render_ablation_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``ablation.png``, ``grad_norm.png``, then ``ablation.md``, from ``ablation.json``
    (:func:`.common.render_report`: the returned paths, the errors)."""
    return render_report(directory, load_ablation, _PLOTTERS, PLOT_FILES, ablation_markdown,
                         REPORT_FILE)
