"""Render an image-classification comparison (``sst compare images``) from ``results.json``.

The file follows :mod:`sparse_spectral.report`'s schema (``task`` is ``"images"``;
``val_ppl`` is ``exp`` of the validation cross-entropy) and adds, per method::

    "val_accuracy": float, "test_accuracy": float, "test_loss": float,
    "test_accuracy_std": float,       # optional: std over seeds (0 for one seed)
    "seeds": [{"seed": int, "test_accuracy": float, ...}, ...],   # optional
    "curve": [{"step", "val_loss", "val_accuracy"}, ...]

:func:`render_images_report` writes ``report.md`` (settings, the accuracy table, the share of
the accuracy gap SST closes), ``val_loss.png``, ``accuracy.png`` and ``spectra.png``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import (
    _MIB,
    LOW_RANK_BASELINES,
    _colors,
    _display,
    _finite_points,
    _is_number,
    _new_figure,
    _no_data,
    _settings_lines,
    gap_closed,
    load_results,
    ordered_methods,
    plot_spectra,
    plot_val_loss,
    write_report_files,
)

__all__ = ["accuracy_gap_closed", "accuracy_table", "images_report_markdown",
           "plot_accuracy", "render_images_report"]

REPORT_FILE = "report.md"
PLOT_FILES = {"val_loss": "val_loss.png", "accuracy": "accuracy.png", "spectra": "spectra.png"}


def _check_images(results: Mapping[str, Any], path: Path) -> None:
    """The image keys on top of the shared schema (which :func:`load_results` checked)."""
    for name, entry in results["methods"].items():
        for key in ("val_accuracy", "test_accuracy"):
            if not _is_number(entry.get(key)):
                raise ValueError(f"{path}: methods[{name!r}][{key!r}] must be a number, got "
                                 f"{entry.get(key)!r}")


def _acc(methods: Mapping[str, Any], name: str) -> float | None:
    value = (methods.get(name) or {}).get("test_accuracy")
    return float(value) if _is_number(value) and math.isfinite(value) else None


def accuracy_gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank test-accuracy gap that SST closes.

    ``(sst - best_other) / (full - best_other)``: :func:`report.gap_closed` applied to
    ``-accuracy`` (lower is better there), so every report shares one rule.
    """
    negated = {name: {"val_ppl": -acc} for name in results["methods"]
               if (acc := _acc(results["methods"], name)) is not None}
    return gap_closed({"methods": negated})


def _gap_sentence(results: Mapping[str, Any]) -> str:
    methods = results["methods"]
    share = accuracy_gap_closed(results)
    full, sst = _acc(methods, "full"), _acc(methods, "sst")
    baselines = [(a, n) for n in LOW_RANK_BASELINES if (a := _acc(methods, n)) is not None]
    if share is None:
        if full is None or sst is None or not baselines:
            return ("Share of the accuracy gap closed by SST: not computed; it needs full "
                    "rank, SST and a low-rank baseline (LoRA, ReLoRA*, GaLore).")
        best, name = max(baselines)
        return (f"Share of the accuracy gap closed by SST: not computed; the best other "
                f"low-rank method ({_display(name)}, {100 * best:.2f}%) is not worse than "
                f"full rank ({100 * full:.2f}%), so there is no gap to close.")
    best, name = max(baselines)
    return (f"SST closes {100 * share:.1f}% of the test-accuracy gap between the best other "
            f"low-rank method ({_display(name)}, {100 * best:.2f}%) and full rank "
            f"({100 * full:.2f}%): (SST - best other) / (full - best other) with SST at "
            f"{100 * sst:.2f}%.")


def _pct(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not _is_number(value):
        return "-"
    text = f"{100 * value:.2f}"
    std = entry.get(f"{key}_std")
    if _is_number(std) and len(entry.get("seeds") or []) > 1:
        text += f" ± {100 * std:.2f}"
    return text


def accuracy_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method | trainable params | share | grad+optimizer MiB | step ms |
    val loss | val accuracy (%) | test accuracy (%) (mean ± std over seeds when several)."""
    lines = ["| method | trainable params | share | grad+optimizer bytes (MiB) | step time (ms) "
             "| val loss | val accuracy (%) | test accuracy (%) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ordered_methods(results["methods"]):
        e = results["methods"][name]
        share = (f"{100 * e['trainable_params'] / e['total_params']:.1f}%"
                 if e["total_params"] else "-")
        cells = [name, f"{e['trainable_params']:,d}", share,
                 f"{e['grad_optimizer_bytes'] / _MIB:.2f}", f"{1000 * e['step_time_s']:.1f}",
                 f"{e['val_loss']:.4f}", _pct(e, "val_accuracy"), _pct(e, "test_accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def images_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of an image-classification comparison."""
    seeds = results["settings"].get("seeds") or [results["settings"].get("seed")]
    lines = [f"# {results['title']}", "", f"Task: {results['task']}", "", "## Settings", ""]
    lines += _settings_lines(results["settings"])
    lines += ["", "## Results", "", accuracy_table(results), "", _gap_sentence(results), "",
              f"Accuracies are over whole splits; seeds: {seeds} (mean ± sample std when "
              "several; curves, step times and spectra are the first seed's). Validation is "
              "held out of the training images; test is the official test split "
              "(Fashion-MNIST) or a seeded 20% (digits). Share: trainable parameters over all "
              "parameters.", "", "## Figures", ""]
    lines += [f"![{key.replace('_', ' ')}]({file})" for key, file in PLOT_FILES.items()]
    return "\n".join(lines) + "\n"


def plot_accuracy(results: Mapping[str, Any]):
    """Validation accuracy against optimizer step, one line per method."""
    fig = _new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    colors, drawn = _colors(names), 0
    for name in names:
        curve = [p for p in results["methods"][name]["curve"] if _is_number(p.get("val_accuracy"))]
        steps, acc = _finite_points([p["step"] for p in curve],
                                    [100 * p["val_accuracy"] for p in curve])
        if steps:
            ax.plot(steps, acc, marker=".", color=colors[name], label=_display(name))
            drawn += 1
    if not drawn:
        _no_data(ax, "no accuracy curve recorded")
        return fig
    ax.set(xlabel="step", ylabel="validation accuracy (%)", title="Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


_PLOTTERS = {"val_loss": plot_val_loss, "accuracy": plot_accuracy, "spectra": plot_spectra}


def render_images_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.md`` and the three plots from ``<directory>/results.json``.

    Plots first, ``report.md`` last, each atomically (as :func:`report.render_report`).

    Raises:
        FileNotFoundError: ``results.json`` does not exist.
        ValueError: it is invalid (the message names the path and the key).
    """
    results = load_results(directory)
    _check_images(results, Path(directory) / "results.json")
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, images_report_markdown)
