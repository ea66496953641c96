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

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import (
    check_numbers,
    check_points,
    check_spectra,
    check_type,
    display,
    gap,
    headline,
    headline_gap,
    is_number,
    load_results,
    metric_values,
    render_report,
    require,
)
from .markdown import (
    GapWording,
    accounting_columns,
    gap_sentence,
    methods_table,
    report_markdown,
    seeds_column,
)
from .plots import finite_points, plot_methods, plot_spectra, plot_val_loss

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
    """:func:`.common.load_results` of an LM comparison, each method also checked by
    :func:`check_lm_method`."""
    return load_results(directory, check_lm_method)


# --------------------------------------------------------------------------
# The share of the gap closed
# --------------------------------------------------------------------------


# The LM report's own words: no metric name before "gap", the missing figures named, and
# the formula written from the baseline's side.
_WORDING = GapWording(
    subject="", missing="; no finite {label} for {roles}.",
    closing=": (best other - SST) / (best other - full) with SST at {sst}.")


def _gap_sentence(results: Mapping[str, Any]) -> str:
    metric, result = headline_gap(results, "lm")
    return gap_sentence(result, metric.label, wording=_WORDING)


#: The paper's shares of the gap closed, against LoRA and ReLoRA* (SPEC section 8).
PAPER_GAP_SHARES = {"OPT-125M": 0.676, "LLaMA-130M": 0.658, "LLaMA-1.3B": 0.974}
PAPER_BASELINES = ("lora", "relora")


def paper_sentence(results: Mapping[str, Any]) -> str:
    """One plain sentence: what this comparison shows against the paper's claim.

    The paper's share is computed against LoRA and ReLoRA* only, so this one is too (on
    the headline metric, mean over seeds); GaLore and APOLLO stay in the sentence before.
    """
    metric = headline(results, "lm")
    values = metric_values(results.get("methods", {}), metric.key)
    present = [m for m in PAPER_BASELINES if m in values]
    others = ", ".join(f"{100 * v:.1f}% at {name}" for name, v in PAPER_GAP_SHARES.items()
                       if name != "LLaMA-130M")
    claim = (f"{100 * PAPER_GAP_SHARES['LLaMA-130M']:.1f}% of the gap between the better of "
             f"LoRA and ReLoRA* and full rank at LLaMA-130M; {others}")
    if not present:
        return (f"The paper's claim (SST closes {claim}) needs LoRA or ReLoRA*; this run has "
                "neither.")
    result = gap({m: values.get(m) for m in ("full", "sst", *present)},
                 metric.higher_is_better)
    if result.missing:
        names = {"full": "full rank", "sst": "SST",
                 "baseline": " and ".join(display(m) for m in present)}
        roles = " or ".join(names[role] for role in result.missing)
        return f"This run cannot test the paper's claim (SST closes {claim}): no finite {roles}."
    name, best = result.best
    if result.share is None:
        return (f"This run cannot test the paper's claim (SST closes {claim}): full rank "
                f"({result.full:.2f}) is not ahead of {display(name)} ({best:.2f}) here, as "
                "happens when training is too short for full rank to lead; see the longer runs "
                "in benchmarks/README.md.")
    # Compared as shown (one decimal): the paper's 65.8% is itself rounded.
    share, paper = round(100 * result.share, 1), round(100 * PAPER_GAP_SHARES["LLaMA-130M"], 1)
    if share < 0:
        verdict = f"SST is worse than {display(name)} here, which contradicts the paper's claim"
    elif share < paper - 10:
        verdict = (f"SST closes {share:.1f}% of the gap between {display(name)} and full rank "
                   f"here, {paper - share:.1f} points short of the paper's claim")
    elif share < paper:
        verdict = (f"SST closes {share:.1f}% of the gap between {display(name)} and full rank "
                   f"here, within {paper - share:.1f} points of the paper's claim")
    else:
        verdict = (f"SST closes {share:.1f}% of the gap between {display(name)} and full rank "
                   "here, as much as the paper claims or more")
    return f"{verdict} (the paper: SST closes {claim})."


def gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank gap that SST closes on the headline (SPEC section 8).

    ``(best_other - sst) / (best_other - full)`` with ``best_other`` the best value among
    the low-rank baselines present (:data:`~.common.LOW_RANK_BASELINES`: LoRA, ReLoRA*,
    GaLore, APOLLO, APOLLO-Mini). 1 means SST matches full rank, 0 means it is no better
    than the best baseline, and a negative value means it is worse.

    Args:
        results: reads ``headline`` (default: validation perplexity, lower is better) and
            ``methods[*][headline key]``.

    Returns:
        The share, or None when full rank, SST or every baseline is missing (or not
        finite), or when the best baseline is not worse than full rank (no gap).
    """
    return headline_gap(results, "lm")[1].share


# --------------------------------------------------------------------------
# The Markdown report
# --------------------------------------------------------------------------


_COLUMNS = [*accounting_columns(), seeds_column("val ppl", "val_ppl"),
            seeds_column("test ppl", "test_ppl")]


def results_table(results: Mapping[str, Any]) -> str:
    """The Markdown results table, one row per method.

    Columns: method | trainable params | share (of all parameters) | grad+optimizer bytes
    (MiB) | step time (ms, median) | val ppl | test ppl (``-`` when not measured; mean ± std
    over seeds when several).
    """
    return methods_table(results, _COLUMNS)


def lm_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of an LM comparison."""
    return report_markdown(
        results["title"], f"Task: {results['task']}", results["settings"],
        results_table(results), [_gap_sentence(results), paper_sentence(results)], PLOT_FILES,
        note="Share: trainable parameters over all parameters. Gradient and optimizer-state "
             "bytes are measured from the tensors; step time is the median per optimizer step.")


# --------------------------------------------------------------------------
# Plots and writing
# --------------------------------------------------------------------------


def _pruning(entry: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    points = entry.get("pruning") or []
    return finite_points([p["ratio"] for p in points], [p["ppl"] for p in points],
                         positive=True)  # log scale: drop zeros


def plot_pruning(results: Mapping[str, Any]):
    """Validation perplexity (log y) against the pruning ratio, one line per method."""
    return plot_methods(results, _pruning, empty="no pruning data recorded",
                        xlabel="pruning ratio (share of singular values removed)",
                        ylabel="validation perplexity", title="Singular-value pruning",
                        log_y=True, marker="o")


_PLOTTERS = {"val_loss": plot_val_loss, "spectra": plot_spectra, "pruning": plot_pruning}


def render_lm_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``val_loss.png``, ``spectra.png``, ``pruning.png``, then ``report.md``, from
    ``results.json`` (:func:`.common.render_report`: the returned paths, the errors)."""
    return render_report(directory, load_lm_results, _PLOTTERS, PLOT_FILES, lm_report_markdown)
