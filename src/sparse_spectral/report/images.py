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
    MIB,
    Gap,
    check_numbers,
    check_points,
    check_spectra,
    colors,
    display,
    figure_lines,
    finite_points,
    gap,
    headline,
    is_number,
    load_results,
    metric_name,
    metric_values,
    new_figure,
    no_data,
    ordered_methods,
    params_share,
    plot_spectra,
    plot_val_loss,
    require,
    settings_lines,
    write_report_files,
)

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
    """Read and check ``<directory>/results.json`` of an image-classification comparison.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is invalid (the message names the path and the key).
    """
    return load_results(directory, _check_images_method)


def _gap(results: Mapping[str, Any]) -> Gap:
    metric = headline(results, "images")
    return gap(metric_values(results["methods"], metric.key), metric.higher_is_better)


def accuracy_gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank gap SST closes on the headline (default: test accuracy).

    ``(sst - best_other) / (full - best_other)``, the rule of :func:`.common.gap`.

    Args:
        results: reads ``headline`` and ``methods[*][headline key]``.
    """
    return _gap(results).share


def _metric(key: str, value: float) -> str:
    # Accuracies are fractions shown in percent; another headline (a loss) as it is.
    return f"{100 * value:.2f}%" if key.endswith("accuracy") else f"{value:.4f}"


def _gap_sentence(results: Mapping[str, Any]) -> str:
    metric = headline(results, "images")
    result = _gap(results)
    what = metric_name(metric.label)
    if result.missing:
        return (f"Share of the {what} gap closed by SST: not computed; it needs full "
                "rank, SST and a low-rank baseline (LoRA, ReLoRA*, GaLore).")
    name, best = result.best
    best_text, full_text = _metric(metric.key, best), _metric(metric.key, result.full)
    if result.share is None:
        return (f"Share of the {what} gap closed by SST: not computed; the best other "
                f"low-rank method ({display(name)}, {best_text}) is not worse than "
                f"full rank ({full_text}), so there is no gap to close.")
    return (f"SST closes {100 * result.share:.1f}% of the {metric.label.replace(' ', '-')} gap "
            f"between the best other low-rank method ({display(name)}, {best_text}) and full "
            f"rank ({full_text}): (SST - best other) / (full - best other) with SST at "
            f"{_metric(metric.key, result.sst)}.")


def _pct(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not is_number(value):
        return "-"
    text = f"{100 * value:.2f}"
    std = entry.get(f"{key}_std")
    if is_number(std) and len(entry.get("seeds") or []) > 1:
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
        cells = [name, f"{e['trainable_params']:,d}", params_share(e),
                 f"{e['grad_optimizer_bytes'] / MIB:.2f}", f"{1000 * e['step_time_s']:.1f}",
                 f"{e['val_loss']:.4f}", _pct(e, "val_accuracy"), _pct(e, "test_accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def images_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of an image-classification comparison."""
    seeds = results["settings"].get("seeds") or [results["settings"].get("seed")]
    lines = [f"# {results['title']}", "", f"Task: {results['task']}", "", "## Settings", ""]
    lines += settings_lines(results["settings"])
    lines += ["", "## Results", "", accuracy_table(results), "", _gap_sentence(results), "",
              f"Accuracies are over whole splits; seeds: {seeds} (mean ± sample std when "
              "several; curves, step times and spectra are the first seed's). Validation is "
              "held out of the training images; test is the official test split "
              "(Fashion-MNIST) or a seeded 20% (digits). Share: trainable parameters over all "
              "parameters.", "", "## Figures", ""]
    lines += figure_lines(PLOT_FILES)
    return "\n".join(lines) + "\n"


def plot_accuracy(results: Mapping[str, Any]):
    """Validation accuracy against optimizer step, one line per method."""
    fig = new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    palette, drawn = colors(names), 0
    for name in names:
        curve = [p for p in results["methods"][name]["curve"] if is_number(p.get("val_accuracy"))]
        steps, acc = finite_points([p["step"] for p in curve],
                                   [100 * p["val_accuracy"] for p in curve])
        if steps:
            ax.plot(steps, acc, marker=".", color=palette[name], label=display(name))
            drawn += 1
    if not drawn:
        no_data(ax, "no accuracy curve recorded")
        return fig
    ax.set(xlabel="step", ylabel="validation accuracy (%)", title="Validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


_PLOTTERS = {"val_loss": plot_val_loss, "accuracy": plot_accuracy, "spectra": plot_spectra}


def render_images_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``val_loss.png``, ``accuracy.png``, ``spectra.png``, then ``report.md``.

    Each is written atomically, the report last.

    Returns:
        ``{"report": ..., "val_loss": ..., "accuracy": ..., "spectra": ...}`` paths.

    Raises:
        FileNotFoundError: ``results.json`` does not exist.
        ValueError: it is invalid (the message names the path and the key).
    """
    results = load_images_results(directory)
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, images_report_markdown)
