"""The graph comparison report (``sst compare graph``) from its ``results.json``.

:func:`render_graph_report` writes next to ``results.json``::

    report.md        title, settings, notes, the mean +- std table, the share of the gap SST closes
    val_curves.png   validation selection score (F1 or (ROC+AP)/2) against epoch, per method
    embeddings.png   best-val embeddings of the first seed in the Poincare disk, per method

Schema of ``results.json`` (what ``sst compare graph`` writes), on top of :mod:`.common`'s::

    {"task": "graph", "settings": {"task": "nc"|"lp", ...}, "notes": [str],
     "labels": [int] (NC only, optional),
     "methods": {"<name>": {
         "val_<m>" / "test_<m>": {"mean": float, "std": float}   (m: acc, f1 | roc, ap),
         "best_epoch": {"mean", "std"},
         "runs": [{"seed": int, "curve": [{"epoch": int, "val_score": float}, ...],
                   "embedding_2d": [[x, y], ...] (first seed, optional), ...}, ...]}}}

The share of the gap is :func:`.common.gap` on the test means: first on the headline metric
(default NC: F1, micro F1 = accuracy for more than two classes; LP: ROC-AUC), then on the
task's other gap metrics (LP: AP).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import (
    RESULTS_FILE,
    Headline,
    display,
    gap,
    headline,
    load_results,
    ordered_methods,
    render_report,
)
from .markdown import (
    Column,
    GapWording,
    accounting_columns,
    gap_sentence,
    methods_table,
    report_markdown,
)
from .plots import finite_points, new_figure, no_data, plot_methods

__all__ = ["gap_shares", "graph_report_markdown", "graph_table", "load_graph_results",
           "plot_embeddings", "plot_val_curves", "render_graph_report"]

PLOT_FILES = {"val_curves": "val_curves.png", "embeddings": "embeddings.png"}
_METRIC_NAMES = {"acc": "accuracy", "f1": "F1", "roc": "ROC-AUC", "ap": "AP"}
_REPORTED = {"nc": ("acc", "f1"), "lp": ("roc", "ap")}
# Every graph metric is a score (higher is better); the headline comes first.
_GAP_KEYS = {"nc": ("test_f1",), "lp": ("test_roc", "test_ap")}
# The graph report names the metric by its whole label and gives means over seeds.
_WORDING = GapWording(
    subject="{label} ", missing=" (needs full rank, SST and a low-rank baseline).",
    no_gap_end=".", gap_name="{label}", closing=", with SST at {sst} (means over seeds).")


def load_graph_results(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``<directory>/results.json`` of a graph comparison and check its main keys.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid JSON, not a graph comparison, or a method without its metrics.
    """
    results = load_results(directory)
    path = Path(directory) / RESULTS_FILE
    if results["task"] != "graph":
        raise ValueError(f"{path}: not a graph comparison (task must be 'graph')")
    task = results["settings"].get("task")
    if task not in _REPORTED:
        raise ValueError(f"{path}: settings.task must be 'nc' or 'lp', got {task!r}")
    for name, entry in results["methods"].items():
        for key in (f"test_{m}" for m in _REPORTED[task]):
            value = entry.get(key)
            if not isinstance(value, dict) or "mean" not in value or "std" not in value:
                raise ValueError(f"{path}: methods[{name!r}] is missing {key!r} "
                                 "({'mean': ..., 'std': ...})")
    return results


def _pm(stat: Mapping[str, float] | None, scale: float = 100.0) -> str:
    if not stat:
        return "-"
    return f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"


def _stat_column(header: str, key: str, scale: float = 100.0) -> Column:
    return header, lambda entry: _pm(entry.get(key), scale)


def graph_table(results: Mapping[str, Any]) -> str:
    """Markdown table, one row per method: sizes, step time, metrics (mean ± std, in %)."""
    metrics = _REPORTED[results["settings"]["task"]]
    columns = accounting_columns("grad+optimizer (MiB)", "step (ms)", mib_digits=3)
    columns += [_stat_column(f"{split} {_METRIC_NAMES[m]}", f"{split}_{m}")
                for split in ("val", "test") for m in metrics]
    columns += [_stat_column("best epoch", "best_epoch", 1.0),
                ("seeds", lambda entry: str(len(entry.get("runs", []))))]
    return methods_table(results, columns, display)


def _gap_metrics(results: Mapping[str, Any]) -> list[Headline]:
    """The headline metric, then the task's other gap metrics."""
    task = results["settings"]["task"]
    main = headline(results, f"graph:{task}")
    others = [Headline(key, f"test {_METRIC_NAMES[key.removeprefix('test_')]}", True)
              for key in _GAP_KEYS[task] if key != main.key]
    return [main, *others]


def gap_shares(results: Mapping[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Per gap metric: ``(share SST closes, sentence)`` on the test means over seeds.

    Args:
        results: reads ``settings.task``, ``headline`` and ``methods[*][key]["mean"]``.

    Returns:
        ``{metric: (share or None, sentence)}``, the metric named without ``test_`` ("f1",
        "roc", "ap"), the headline first.
    """
    out = {}
    for metric in _gap_metrics(results):
        means = {n: (e.get(metric.key) or {}).get("mean")
                 for n, e in results["methods"].items()}
        result = gap(means, metric.higher_is_better)
        sentence = gap_sentence(result, metric.label, lambda value: f"{100 * value:.1f}",
                                _WORDING)
        out[metric.key.removeprefix("test_")] = (result.share, sentence)
    return out


def graph_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of a graph comparison."""
    # An empty method_options says nothing; a non-empty one is listed.
    settings = {k: v for k, v in results["settings"].items() if k != "method_options"
                or v}
    return report_markdown(
        results["title"], f"Task: hyperbolic graph ({results['settings']['task'].upper()}), "
        "HyboNet", settings, graph_table(results),
        [sentence for _, sentence in gap_shares(results).values()], PLOT_FILES,
        data_notes=results.get("notes") or [],
        note="Metrics in %, mean ± sample standard deviation over seeds, each seed's test "
             "value taken at its best validation epoch (HyboNet's selection: F1 for NC, "
             "(ROC + AP) / 2 for LP). Share: trainable over all parameters; grad+optimizer: "
             "gradient and optimizer-state bytes of the Euclidean weights' optimizer at the "
             "end of the first seed's run; step: median seconds per training step.")


def _first_seed_curve(entry: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    runs = entry.get("runs") or []
    curve = runs[0].get("curve", []) if runs else []
    return finite_points([p["epoch"] for p in curve], [p["val_score"] for p in curve])


def plot_val_curves(results: Mapping[str, Any]):
    """Validation selection score against epoch, first seed of each method."""
    score = "F1" if results["settings"]["task"] == "nc" else "(ROC-AUC + AP) / 2"
    return plot_methods(results, _first_seed_curve, empty="no validation curve recorded",
                        xlabel="epoch", ylabel=f"validation {score}",
                        title="Validation (first seed)", linewidth=1)


def plot_embeddings(results: Mapping[str, Any]):
    """Best-val embeddings of the first seed in the Poincare disk, one panel per method."""
    names = [n for n in ordered_methods(results["methods"])
             if (results["methods"][n].get("runs") or [{}])[0].get("embedding_2d")]
    fig = new_figure(width=max(4.0, 3.2 * len(names)), height=3.6)
    if not names:
        no_data(fig.add_subplot(), "no embeddings recorded")
        return fig
    labels = results.get("labels")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        xy = results["methods"][name]["runs"][0]["embedding_2d"]
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        if labels and len(labels) == len(xy):  # NC: colour by class
            ax.scatter(xs, ys, c=labels, cmap="tab10", s=3, linewidths=0)
        else:
            ax.scatter(xs, ys, color="tab:blue", s=3, linewidths=0)
        ax.add_patch(_circle())
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", title=display(name))
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _circle():
    from matplotlib.patches import Circle

    return Circle((0, 0), 1.0, fill=False, color="black", linewidth=0.8)


_PLOTTERS = {"val_curves": plot_val_curves, "embeddings": plot_embeddings}


def render_graph_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``val_curves.png``, ``embeddings.png``, then ``report.md``, from ``results.json``
    (:func:`.common.render_report`: the returned paths, the errors)."""
    return render_report(directory, load_graph_results, _PLOTTERS, PLOT_FILES,
                         graph_report_markdown)
