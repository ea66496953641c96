"""Render the report of a graph comparison (``sst compare graph``) from its ``results.json``.

Writes next to ``results.json``::

    report.md        title, settings, notes, the mean +- std table, the share of the gap SST closes
    val_curves.png   validation selection score (F1 or (ROC+AP)/2) against epoch, per method
    embeddings.png   best-val embeddings of the first seed in the Poincare disk, per method

Schema of ``results.json`` (what :func:`sparse_spectral.tasks.graph.run_compare` writes)::

    {"task": "graph", "title": str, "settings": {"task": "nc"|"lp", ...}, "notes": [str],
     "labels": [int] (NC only, optional),
     "methods": {"<name>": {
         "trainable_params": int, "total_params": int, "grad_optimizer_bytes": int,
         "step_time_s": float,
         "val_<m>" / "test_<m>": {"mean": float, "std": float}   (m: acc, f1 | roc, ap),
         "best_epoch": {"mean", "std"},
         "runs": [{"seed": int, "curve": [{"epoch": int, "val_score": float}, ...],
                   "embedding_2d": [[x, y], ...] (first seed, optional), ...}, ...]}}}

The share of the gap is :func:`sparse_spectral.report.share_of_gap` on the test means (higher
is better): NC on F1 (micro F1 = accuracy for more than two classes), LP on ROC-AUC and AP.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import (_colors, _display, _new_figure, _no_data, _settings_lines,
                     best_baseline, ordered_methods, share_of_gap,
                     write_report_files)

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOT_FILES = {"val_curves": "val_curves.png", "embeddings": "embeddings.png"}
_METRIC_NAMES = {"acc": "accuracy", "f1": "F1", "roc": "ROC-AUC", "ap": "AP"}
_REPORTED = {"nc": ("acc", "f1"), "lp": ("roc", "ap")}
_GAP_METRICS = {"nc": ("f1",), "lp": ("roc", "ap")}
_MIB = 2 ** 20


def is_graph_results(directory: str | os.PathLike) -> bool:
    """Whether ``<directory>/results.json`` exists and is a graph comparison's."""
    try:
        results = json.loads((Path(directory) / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and results.get("task") == "graph"


def load_graph_results(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``<directory>/results.json`` of a graph comparison and check its main keys.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid JSON, not a graph comparison, or a method without its metrics.
    """
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (run `sst compare graph` to create it)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(results, dict) or results.get("task") != "graph":
        raise ValueError(f"{path}: not a graph comparison (task must be 'graph')")
    task = (results.get("settings") or {}).get("task")
    if task not in _REPORTED:
        raise ValueError(f"{path}: settings.task must be 'nc' or 'lp', got {task!r}")
    methods = results.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"{path}: 'methods' must be a non-empty object")
    for name, entry in methods.items():
        for key in (f"test_{m}" for m in _REPORTED[task]):
            value = (entry or {}).get(key)
            if not isinstance(value, dict) or "mean" not in value or "std" not in value:
                raise ValueError(f"{path}: methods[{name!r}] is missing {key!r} "
                                 "({'mean': ..., 'std': ...})")
    return results


def _pm(stat: Mapping[str, float] | None, scale: float = 100.0) -> str:
    if not stat:
        return "-"
    return f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"


def graph_table(results: Mapping[str, Any]) -> str:
    """Markdown table, one row per method: sizes, step time, metrics (mean ± std, in %)."""
    task = results["settings"]["task"]
    metrics = _REPORTED[task]
    head = (["method", "trainable params", "share", "grad+optimizer (MiB)", "step (ms)"]
            + [f"val {_METRIC_NAMES[m]}" for m in metrics]
            + [f"test {_METRIC_NAMES[m]}" for m in metrics] + ["best epoch", "seeds"])
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name in ordered_methods(results["methods"]):
        e = results["methods"][name]
        share = f"{100 * e['trainable_params'] / e['total_params']:.1f}%" \
            if e.get("total_params") else "-"
        cells = [_display(name), f"{e['trainable_params']:,d}", share,
                 f"{e['grad_optimizer_bytes'] / _MIB:.3f}", f"{1000 * e['step_time_s']:.1f}"]
        cells += [_pm(e.get(f"val_{m}")) for m in metrics]
        cells += [_pm(e.get(f"test_{m}")) for m in metrics]
        cells += [_pm(e.get("best_epoch"), 1.0), str(len(e.get("runs", [])))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gap_shares(results: Mapping[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Per gap metric: ``(share SST closes, sentence)`` on the test means."""
    task = results["settings"]["task"]
    methods = results["methods"]
    out = {}
    for metric in _GAP_METRICS[task]:
        label = _METRIC_NAMES[metric]
        means = {n: (e.get(f"test_{metric}") or {}).get("mean") for n, e in methods.items()}
        full, sst = means.get("full"), means.get("sst")
        best = best_baseline(means, higher_is_better=True)
        if full is None or sst is None or best is None:
            out[metric] = (None, f"Share of the test {label} gap closed by SST: not computed "
                                 "(needs full rank, SST and a low-rank baseline).")
            continue
        name, other = best
        share = share_of_gap(full, sst, other, higher_is_better=True)
        if share is None:
            out[metric] = (None, f"Share of the test {label} gap closed by SST: not computed; "
                                 f"the best other low-rank method ({_display(name)}, "
                                 f"{100 * other:.1f}) is not worse than full rank "
                                 f"({100 * full:.1f}).")
            continue
        out[metric] = (share, f"SST closes {100 * share:.1f}% of the test {label} gap between "
                              f"the best other low-rank method ({_display(name)}, "
                              f"{100 * other:.1f}) and full rank ({100 * full:.1f}), with SST at "
                              f"{100 * sst:.1f} (means over seeds).")
    return out


def report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text."""
    lines = [f"# {results['title']}", "", "Task: hyperbolic graph "
             f"({results['settings']['task'].upper()}), HyboNet", "", "## Settings", ""]
    settings = {k: v for k, v in results["settings"].items() if k != "method_options"
                or v}
    lines += _settings_lines(settings)
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Data notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Results", "", graph_table(results), ""]
    lines += [sentence for _, sentence in gap_shares(results).values()]
    lines += ["", "Metrics in %, mean ± sample standard deviation over seeds, each seed's test "
              "value taken at its best validation epoch (HyboNet's selection: F1 for NC, "
              "(ROC + AP) / 2 for LP). Share: trainable over all parameters; grad+optimizer: "
              "gradient and optimizer-state bytes of the Euclidean weights' optimizer at the "
              "end of the first seed's run; step: median seconds per training step.",
              "", "## Figures", ""]
    lines += [f"![{key.replace('_', ' ')}]({file})" for key, file in PLOT_FILES.items()]
    return "\n".join(lines) + "\n"


def plot_val_curves(results: Mapping[str, Any]):
    """Validation selection score against epoch, first seed of each method."""
    fig = _new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    colors, drawn = _colors(names), 0
    for name in names:
        runs = results["methods"][name].get("runs") or []
        curve = runs[0].get("curve", []) if runs else []
        pts = [(p["epoch"], p["val_score"]) for p in curve if math.isfinite(p["val_score"])]
        if pts:
            ax.plot(*zip(*pts), color=colors[name], label=_display(name), linewidth=1)
            drawn += 1
    if not drawn:
        _no_data(ax, "no validation curve recorded")
        return fig
    score = "F1" if results["settings"]["task"] == "nc" else "(ROC-AUC + AP) / 2"
    ax.set(xlabel="epoch", ylabel=f"validation {score}", title="Validation (first seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_embeddings(results: Mapping[str, Any]):
    """Best-val embeddings of the first seed in the Poincare disk, one panel per method."""
    names = [n for n in ordered_methods(results["methods"])
             if (results["methods"][n].get("runs") or [{}])[0].get("embedding_2d")]
    fig = _new_figure(width=max(4.0, 3.2 * len(names)), height=3.6)
    if not names:
        _no_data(fig.add_subplot(), "no embeddings recorded")
        return fig
    labels = results.get("labels")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        xy = results["methods"][name]["runs"][0]["embedding_2d"]
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        if labels and len(labels) == len(xy):  # NC: colour by class
            ax.scatter(xs, ys, c=labels, cmap="tab10", s=3, linewidths=0)
        else:
            ax.scatter(xs, ys, color="tab:blue", s=3, linewidths=0)
        ax.add_patch(_circle())
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal", title=_display(name))
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _circle():
    from matplotlib.patches import Circle

    return Circle((0, 0), 1.0, fill=False, color="black", linewidth=0.8)


_PLOTTERS = {"val_curves": plot_val_curves, "embeddings": plot_embeddings}


def render_graph_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write the plots, then ``report.md`` (each atomically); return their paths."""
    results = load_graph_results(directory)
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, report_markdown)
