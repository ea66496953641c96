"""The image-classification comparison report (``sst compare images``) from ``results.json``.

Per method, on top of :mod:`.common`'s keys::

    "val_loss": float, "val_accuracy": float, "test_accuracy": float, "test_loss": float,
    "test_accuracy_std": float,       # optional: std over seeds (0 for one seed)
    "seeds": [{"seed": int, "test_accuracy": float, ...}, ...],   # optional
    "curve": [{"step", "val_loss", "val_accuracy"}, ...],
    "spectra": {...}                  # optional, as in the LM report

Older files also carry a ``val_ppl`` (exp of the validation loss) that the report ignores.
:func:`render_images_report` writes ``report.md`` (settings, the accuracy table, the share of
the gap SST closes on the headline metric, test accuracy by default), ``val_loss.png``,
``accuracy.png`` and ``spectra.png``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import (
    check_numbers,
    check_points,
    check_spectra,
    headline_gap,
    is_number,
    load_results,
    render_report,
    require,
)
from .markdown import (
    accounting_columns,
    gap_sentence,
    methods_table,
    report_markdown,
    seeds_column,
)
from .plots import finite_points, plot_methods, plot_spectra, plot_val_loss

__all__ = ["accuracy_gap_closed", "accuracy_table", "images_report_markdown",
           "load_images_results", "plot_accuracy", "render_images_report"]

PLOT_FILES = {"val_loss": "val_loss.png", "accuracy": "accuracy.png", "spectra": "spectra.png"}


def _check_images_method(name: str, entry: Mapping[str, Any], where: str, path: Path) -> None:
    """The image keys of one method (module docstring)."""
    check_numbers(entry, ("val_loss", "val_accuracy", "test_accuracy"), where, path)
    check_points(require(entry, "curve", where, path), ("step", "val_loss"),
                 f"{where}['curve']", path)
    check_spectra(entry, where, path)


def load_images_results(directory: str | os.PathLike) -> dict[str, Any]:
    """:func:`.common.load_results` of an image-classification comparison, with its keys."""
    return load_results(directory, _check_images_method)


def accuracy_gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank gap SST closes on the headline (default: test accuracy).

    ``(sst - best_other) / (full - best_other)``, the rule of :func:`.common.gap`.

    Args:
        results: reads ``headline`` and ``methods[*][headline key]``.
    """
    return headline_gap(results, "images")[1].share


def _metric(key: str, value: float) -> str:
    # Accuracies are fractions shown in percent; another headline (a loss) as it is.
    return f"{100 * value:.2f}%" if key.endswith("accuracy") else f"{value:.4f}"


def _gap_sentence(results: Mapping[str, Any]) -> str:
    metric, result = headline_gap(results, "images")
    return gap_sentence(result, metric.label, lambda value: _metric(metric.key, value))


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}" if is_number(value) else "-"


_COLUMNS = [*accounting_columns(), ("val loss", lambda e: f"{e['val_loss']:.4f}"),
            seeds_column("val accuracy (%)", "val_accuracy", _percent, scale=100.0),
            seeds_column("test accuracy (%)", "test_accuracy", _percent, scale=100.0)]


def accuracy_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method | trainable params | share | grad+optimizer MiB | step ms |
    val loss | val accuracy (%) | test accuracy (%) (mean ± std over seeds when several)."""
    return methods_table(results, _COLUMNS)


def images_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of an image-classification comparison."""
    seeds = results["settings"].get("seeds") or [results["settings"].get("seed")]
    return report_markdown(
        results["title"], f"Task: {results['task']}", results["settings"],
        accuracy_table(results), [_gap_sentence(results)], PLOT_FILES,
        note=f"Accuracies are over whole splits; seeds: {seeds} (mean ± sample std when "
             "several; curves, step times and spectra are the first seed's). Validation is "
             "held out of the training images; test is the official test split "
             "(Fashion-MNIST) or a seeded 20% (digits). Share: trainable parameters over all "
             "parameters.")


def _accuracy(entry: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    curve = [p for p in entry["curve"] if is_number(p.get("val_accuracy"))]
    return finite_points([p["step"] for p in curve], [100 * p["val_accuracy"] for p in curve])


def plot_accuracy(results: Mapping[str, Any]):
    """Validation accuracy against optimizer step, one line per method."""
    return plot_methods(results, _accuracy, empty="no accuracy curve recorded", xlabel="step",
                        ylabel="validation accuracy (%)", title="Validation accuracy",
                        marker=".")


_PLOTTERS = {"val_loss": plot_val_loss, "accuracy": plot_accuracy, "spectra": plot_spectra}


def render_images_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``val_loss.png``, ``accuracy.png``, ``spectra.png``, then ``report.md``, from
    ``results.json`` (:func:`.common.render_report`: the returned paths, the errors)."""
    return render_report(directory, load_images_results, _PLOTTERS, PLOT_FILES,
                         images_report_markdown)
