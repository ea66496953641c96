"""The Markdown every report is written in: cells and numbers, tables, the sentence about the
gap SST closes, and the layout of a report (title, settings, results, figures).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .common import Gap, display, is_number, metric_name, ordered_methods

__all__ = ["MIB", "Column", "GapWording", "accounting_columns", "figure_lines", "gap_sentence",
           "markdown_table", "methods_table", "number_text", "params_share", "report_markdown",
           "seeds_column", "settings_lines", "with_seed_std"]

MIB = 2 ** 20

#: A column of :func:`methods_table`: its header and ``entry -> cell text``.
Column = tuple[str, Callable[[Mapping[str, Any]], str]]

# What :attr:`.common.Gap.missing` names, in the words of a sentence.
_ROLES = {"full": "full rank", "sst": "SST",
          "baseline": "a low-rank baseline (LoRA, ReLoRA*, GaLore, APOLLO, APOLLO-Mini)"}


# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------


def number_text(value: Any, digits: int = 2, *, signed: bool = False,
                grouped: bool = False) -> str:
    """A table cell for a number: ``-`` when absent, ``nan``/``inf`` as such.

    Args:
        value: the number (anything else, None included, shows as ``-``).
        digits: digits after the decimal point.
        signed: always show the sign (``+0.0100``).
        grouped: thousands separators (``12,345.60``).
    """
    if not is_number(value):
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:{'+' if signed else ''}{',' if grouped else ''}.{digits}f}"


def with_seed_std(text: str, entry: Mapping[str, Any], key: str, scale: float = 1.0,
                  digits: int = 2) -> str:
    """``text`` plus `` ± std`` when ``entry`` averages several seeds (``key_std``, ``seeds``).

    ``sst compare --seeds`` writes each method's figures as means over seeds with a sample
    standard deviation beside them; a single seed shows the plain figure.
    """
    std = entry.get(f"{key}_std")
    if is_number(std) and len(entry.get("seeds") or []) > 1 and text != "-":
        return f"{text} ± {scale * std:.{digits}f}"
    return text


def params_share(entry: Mapping[str, Any]) -> str:
    """Trainable over all parameters as "12.3%", "-" when the total is 0 or absent."""
    total = entry.get("total_params")
    return f"{100 * entry['trainable_params'] / total:.1f}%" if total else "-"


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   left: int = 1) -> list[str]:
    """The lines of a Markdown table: the first ``left`` columns left-aligned, the rest right."""
    lines = ["| " + " | ".join(header) + " |", "|---" * left + "|---:" * (len(header) - left) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def accounting_columns(bytes_header: str = "grad+optimizer bytes (MiB)",
                       step_header: str = "step time (ms)", mib_digits: int = 2) -> list[Column]:
    """The size and speed columns every comparison starts with (:mod:`.common`'s keys).

    Trainable parameters, their share of all parameters, gradient + optimizer-state MiB
    (``mib_digits`` decimals) and the median step time in milliseconds.
    """
    return [("trainable params", lambda e: f"{e['trainable_params']:,d}"),
            ("share", params_share),
            (bytes_header, lambda e: f"{e['grad_optimizer_bytes'] / MIB:.{mib_digits}f}"),
            (step_header, lambda e: f"{1000 * e['step_time_s']:.1f}")]


def seeds_column(header: str, key: str, fmt: Callable[[Any], str] = number_text,
                 scale: float = 1.0, digits: int = 2) -> Column:
    """A column of ``entry[key]`` shown by ``fmt``, ± its std over seeds when several.

    ``scale`` and ``digits`` apply to the std, as in :func:`with_seed_std`.
    """
    return header, lambda entry: with_seed_std(fmt(entry.get(key)), entry, key, scale, digits)


def methods_table(results: Mapping[str, Any], columns: Sequence[Column],
                  method_name: Callable[[str], str] = str) -> str:
    """A comparison's results table: a row per method in the canonical order.

    Args:
        results: reads ``methods``.
        columns: the columns after the first, ``method`` (shown by ``method_name``).
        method_name: how the first column shows a method's name (as in the file by default).
    """
    methods = results["methods"]
    rows = [[method_name(name), *(cell(methods[name]) for _, cell in columns)]
            for name in ordered_methods(methods)]
    return "\n".join(markdown_table(["method", *(header for header, _ in columns)], rows))


# --------------------------------------------------------------------------
# The gap SST closes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GapWording:
    """How a report words its sentence about the gap SST closes (:func:`gap_sentence`).

    Each field is a :meth:`str.format` template over ``label`` (the headline's label,
    "test BLEU"), ``name`` (the label without its split word, "BLEU"), ``hyphenated`` (the
    label with hyphens, "test-BLEU"); ``missing`` also gets ``roles`` (what has no finite
    value: "full rank or SST") and ``closing`` ``sst`` (SST's value). The defaults are the
    translation and image reports' words.

    Attributes:
        subject: what "Share of the <subject>gap closed by SST: not computed" names.
        missing: the end of that sentence when a figure is missing.
        no_gap_end: the end of it when the best baseline is not worse than full rank.
        gap_name: what "SST closes X% of the <gap_name> gap" names.
        closing: the end of that sentence, after "and full rank (<value>)".
    """

    subject: str = "{name} "
    missing: str = ("; it needs full rank, SST and a low-rank baseline (LoRA, ReLoRA*, GaLore, "
                    "APOLLO, APOLLO-Mini).")
    no_gap_end: str = ", so there is no gap to close."
    gap_name: str = "{hyphenated}"
    closing: str = ": (SST - best other) / (full - best other) with SST at {sst}."


_DEFAULT_WORDING = GapWording()


def gap_sentence(result: Gap, label: str, fmt: Callable[[float], str] = "{:.2f}".format,
                 wording: GapWording = _DEFAULT_WORDING) -> str:
    """The report's sentence about the share of the gap SST closes on one metric.

    Args:
        result: the figures (:func:`.common.gap`).
        label: the metric's label ("validation perplexity").
        fmt: how a value of the metric is shown.
        wording: the report's words (default: :class:`GapWording`'s).

    Returns:
        "SST closes X% of the ... gap between the best other low-rank method (...) and full
        rank (...)...", or a "Share of the ... gap closed by SST: not computed; ..." sentence
        saying why (a missing figure, or no gap).
    """
    words = {"label": label, "name": metric_name(label), "hyphenated": label.replace(" ", "-")}
    not_computed = f"Share of the {wording.subject.format(**words)}gap closed by SST: not computed"
    if result.missing:
        roles = " or ".join(_ROLES[role] for role in result.missing)
        return not_computed + wording.missing.format(roles=roles, **words)
    name, best = result.best
    best_other = f"the best other low-rank method ({display(name)}, {fmt(best)})"
    full = f"full rank ({fmt(result.full)})"
    if result.share is None:
        return f"{not_computed}; {best_other} is not worse than {full}{wording.no_gap_end}"
    return (f"SST closes {100 * result.share:.1f}% of the {wording.gap_name.format(**words)} "
            f"gap between {best_other} and {full}"
            + wording.closing.format(sst=fmt(result.sst), **words) + _seed_spread(result))


def _seed_spread(result: Gap) -> str:
    """`` Within each seed: a%, b%, c% (mean m%, std d%).`` for a multi-seed comparison."""
    if not result.seed_shares:
        return ""
    shown = ", ".join("n/a" if v is None else f"{100 * v:.1f}%" for v in result.seed_shares)
    known = [v for v in result.seed_shares if v is not None]
    if len(known) < 2:
        return f" Within each seed: {shown}."
    return (f" Within each seed: {shown} (mean {100 * statistics.fmean(known):.1f}%, "
            f"std {100 * statistics.stdev(known):.1f}%).")


# --------------------------------------------------------------------------
# The report's layout
# --------------------------------------------------------------------------


def settings_lines(settings: Mapping[str, Any]) -> list[str]:
    """``- **key**: value`` lines (non-strings as key-sorted JSON); ``- (none)`` if empty."""
    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    return [f"- **{key}**: {show(value)}" for key, value in settings.items()] or ["- (none)"]


def figure_lines(plot_files: Mapping[str, str]) -> list[str]:
    """One Markdown image line per plot: ``![val loss](val_loss.png)``."""
    return [f"![{key.replace('_', ' ')}]({file})" for key, file in plot_files.items()]


def report_markdown(title: str, lead: str, settings: Mapping[str, Any], table: str,
                    findings: Sequence[str], plot_files: Mapping[str, str], *,
                    note: str | None = None, data_notes: Sequence[str] = (),
                    appendix: Sequence[str] = ()) -> str:
    """The text of a comparison or ablation report, in the layout every one of them shares::

        # <title>
        <lead>
        ## Settings          settings_lines(settings)
        ## Data notes        one bullet per data note (only when there are any)
        ## Results           the table, the findings (one line each), the note
        ## Figures           figure_lines(plot_files)
        <appendix>           further lines (more sections)

    Sections are separated by blank lines; the text ends with exactly one newline.
    """
    lines = [f"# {title}", "", lead, "", "## Settings", "", *settings_lines(settings)]
    if data_notes:
        lines += ["", "## Data notes", "", *(f"- {text}" for text in data_notes)]
    lines += ["", "## Results", "", table, "", *findings]
    if note is not None:
        lines += ["", note]
    lines += ["", "## Figures", "", *figure_lines(plot_files), *appendix]
    return "\n".join(lines).rstrip("\n") + "\n"
