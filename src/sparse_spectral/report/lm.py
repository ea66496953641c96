"""The language-modelling comparison report (``sst compare lm``) from its ``results.json``.

:func:`render_lm_report` writes next to ``results.json``::

    report.md      title, settings, the results table, the share of the gap SST closes
    val_loss.png   validation loss against step, one line per method
    spectra.png    singular values of the recorded layers, one subplot per layer (log y)
    pruning.png    perplexity against the singular-value pruning ratio (SPEC section 6)

Per method, on top of :mod:`.common`'s keys (required unless marked optional; extra keys
are ignored)::

    "val_loss": float, "val_ppl": float,          # final validation
    "test_ppl": float | null,                     # optional
    "curve": [{"step": int, "val_loss": float,
               "train_loss": float | null}, ...],  # train_loss optional
    "spectra": {"<layer name>": [singular values, descending]},    # optional
    "pruning": [{"ratio": float, "ppl": float}, ...] | null        # optional

Perplexities may be ``NaN`` or ``Infinity`` (Python's ``json`` reads and writes both) when
a run diverged; they are shown as such and never count as the best baseline. The gap is
measured on the headline metric (validation perplexity unless the file declares another).
"""

from __future__ import annotations

import math
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
    check_type,
    colors,
    display,
    figure_lines,
    finite_points,
    gap,
    headline,
    is_number,
    load_results,
    metric_values,
    new_figure,
    no_data,
    ordered_methods,
    params_share,
    plot_spectra,
    plot_val_loss,
    require,
    settings_lines,
    with_seed_std,
    write_report_files,
)

__all__ = ["check_lm_method", "gap_closed", "lm_report_markdown", "load_lm_results",
           "plot_pruning", "render_lm_report", "results_table"]

PLOT_FILES = {"val_loss": "val_loss.png", "spectra": "spectra.png", "pruning": "pruning.png"}


def check_lm_method(name: str, entry: Mapping[str, Any], where: str, path: Path) -> None:
    """The LM keys of one method (module docstring); MT reuses them.

    Raises:
        ValueError: naming ``path``, the method and the key.
    """
    check_numbers(entry, ("val_loss", "val_ppl"), where, path)
    test_ppl = entry.get("test_ppl")
    check_type(test_ppl is None or is_number(test_ppl), f"{where}['test_ppl']",
               "a number or null", test_ppl, path)
    check_points(require(entry, "curve", where, path), ("step", "val_loss"),
                 f"{where}['curve']", path)
    check_spectra(entry, where, path)
    if entry.get("pruning") is not None:
        check_points(entry["pruning"], ("ratio", "ppl"), f"{where}['pruning']", path)


def load_lm_results(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``<directory>/results.json`` of an LM comparison.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid JSON or does not follow the schema.
    """
    return load_results(directory, check_lm_method)


# --------------------------------------------------------------------------
# The share of the gap closed
# --------------------------------------------------------------------------


def _gap(results: Mapping[str, Any]) -> Gap:
    metric = headline(results, "lm")
    return gap(metric_values(results.get("methods", {}), metric.key), metric.higher_is_better)


def _gap_sentence(results: Mapping[str, Any]) -> str:
    label = headline(results, "lm").label
    result = _gap(results)
    if result.missing:
        roles = {"full": "full rank", "sst": "SST",
                 "baseline": "a low-rank baseline (LoRA, ReLoRA*, GaLore)"}
        return (f"Share of the gap closed by SST: not computed; no finite {label} for "
                f"{' or '.join(roles[role] for role in result.missing)}.")
    name, other = result.best
    if result.share is None:
        return (f"Share of the gap closed by SST: not computed; the best other low-rank "
                f"method ({display(name)}, {other:.2f}) is not worse than full rank "
                f"({result.full:.2f}), so there is no gap to close.")
    return (f"SST closes {100 * result.share:.1f}% of the {label.replace(' ', '-')} gap "
            f"between the best other low-rank method ({display(name)}, {other:.2f}) and full "
            f"rank ({result.full:.2f}): (best other - SST) / (best other - full) with SST at "
            f"{result.sst:.2f}.")


def gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank gap that SST closes on the headline (SPEC section 8).

    ``(best_other - sst) / (best_other - full)`` with ``best_other`` the best value among
    the low-rank baselines present (``lora``, ``relora``, ``galore``). 1 means SST matches
    full rank, 0 means it is no better than the best baseline, and a negative value means it
    is worse.

    Args:
        results: reads ``headline`` (default: validation perplexity, lower is better) and
            ``methods[*][headline key]``.

    Returns:
        The share, or None when full rank, SST or every baseline is missing (or not
        finite), or when the best baseline is not worse than full rank (no gap).
    """
    return _gap(results).share


# --------------------------------------------------------------------------
# The Markdown report
# --------------------------------------------------------------------------


def _format_ppl(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if math.isfinite(value) else str(value)


def _table_row(name: str, entry: Mapping[str, Any]) -> str:
    cells = [
        name, f"{entry['trainable_params']:,d}", params_share(entry),
        f"{entry['grad_optimizer_bytes'] / MIB:.2f}",
        f"{1000 * entry['step_time_s']:.1f}",
        with_seed_std(_format_ppl(entry["val_ppl"]), entry, "val_ppl"),
        with_seed_std(_format_ppl(entry.get("test_ppl")), entry, "test_ppl"),
    ]
    return "| " + " | ".join(cells) + " |"


def results_table(results: Mapping[str, Any]) -> str:
    """The Markdown results table, one row per method.

    Columns: method | trainable params | share (of all parameters) | grad+optimizer bytes
    (MiB) | step time (ms, median) | val ppl | test ppl (``-`` when not measured; mean ± std
    over seeds when several).
    """
    methods = results["methods"]
    lines = ["| method | trainable params | share | grad+optimizer bytes (MiB) | "
             "step time (ms) | val ppl | test ppl |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_table_row(name, methods[name]) for name in ordered_methods(methods)]
    return "\n".join(lines)


def lm_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of an LM comparison."""
    lines = [f"# {results['title']}", "", f"Task: {results['task']}", "", "## Settings", ""]
    lines += settings_lines(results["settings"])
    lines += ["", "## Results", "", results_table(results), "", _gap_sentence(results), "",
              "Share: trainable parameters over all parameters. Gradient and optimizer-state "
              "bytes are measured from the tensors; step time is the median per optimizer "
              "step.", "", "## Figures", ""]
    lines += figure_lines(PLOT_FILES)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Plots and writing
# --------------------------------------------------------------------------


def plot_pruning(results: Mapping[str, Any]):
    """Validation perplexity (log y) against the pruning ratio, one line per method."""
    fig = new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    palette, drawn = colors(names), 0
    for name in names:
        points = results["methods"][name].get("pruning") or []
        ratios, ppl = finite_points([p["ratio"] for p in points], [p["ppl"] for p in points],
                                    positive=True)
        if ratios:
            ax.plot(ratios, ppl, marker="o", color=palette[name], label=display(name))
            drawn += 1
    if not drawn:
        no_data(ax, "no pruning data recorded")
        return fig
    ax.set_yscale("log")
    ax.set(xlabel="pruning ratio (share of singular values removed)",
           ylabel="validation perplexity", title="Singular-value pruning")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


_PLOTTERS = {"val_loss": plot_val_loss, "spectra": plot_spectra, "pruning": plot_pruning}


def render_lm_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Render ``report.md`` and the three plots from ``<directory>/results.json``.

    The plots are written first and ``report.md`` last, each atomically (temporary file,
    then ``os.replace``), so an existing ``report.md`` always comes with its figures. Plots
    without data show a "no data" note.

    Returns:
        ``{"report": report.md, "val_loss": val_loss.png, "spectra": spectra.png,
        "pruning": pruning.png}`` paths.

    Raises:
        FileNotFoundError: If ``results.json`` does not exist.
        ValueError: If it is invalid; the message names the path and the key.
    """
    results = load_lm_results(directory)
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, lm_report_markdown)
