"""The translation comparison report (``sst compare mt``) from its ``results.json``.

Per method, the LM keys (:func:`.lm.check_lm_method`: ``val_loss``, ``val_ppl``, ``curve``,
``spectra``) and::

    "test_bleu": float,               # sacreBLEU on the detokenised test set
    "bleu_signature": str,            # sacreBLEU's signature of that score
    "target_tokens_per_s": float | null,
    "decoding": {"beam_size": int, "length_penalty": float, ...},
    "examples": [{"source": str, "reference": str, "hypothesis": str}, ...]

:func:`render_mt_report` writes ``report.md`` (settings, the BLEU table, the share of the gap
SST closes on the headline metric, test BLEU by default; translation examples side by side),
``val_loss.png`` and ``spectra.png``. The Euclidean and hyperbolic models share this format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from .common import (
    display,
    headline_gap,
    is_number,
    load_results,
    ordered_methods,
    render_report,
)
from .lm import check_lm_method
from .markdown import (
    accounting_columns,
    gap_sentence,
    methods_table,
    number_text,
    report_markdown,
    seeds_column,
)
from .plots import plot_spectra, plot_val_loss

__all__ = ["bleu_gap_closed", "bleu_table", "load_mt_results", "mt_report_markdown",
           "render_mt_report"]

PLOT_FILES = {"val_loss": "val_loss.png", "spectra": "spectra.png"}
_PLOTTERS = {"val_loss": plot_val_loss, "spectra": plot_spectra}


def _check_mt_method(name: str, entry: Mapping[str, Any], where: str, path: Path) -> None:
    """The LM keys, then the MT keys, of one method."""
    check_lm_method(name, entry, where, path)
    where = f"{path}: {where}"
    bleu = entry.get("test_bleu")
    if not is_number(bleu):
        raise ValueError(f"{where}['test_bleu'] must be a number, got {bleu!r}")
    if not isinstance(entry.get("bleu_signature"), str):
        raise ValueError(f"{where}['bleu_signature'] must be a str, got "
                         f"{entry.get('bleu_signature')!r}")
    examples = entry.get("examples", [])
    if not isinstance(examples, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), str)
                                        for k in ("source", "reference", "hypothesis"))
            for e in examples):
        raise ValueError(f"{where}['examples'] must be a list of objects with str "
                         f"source, reference and hypothesis")


def load_mt_results(directory: str | os.PathLike) -> dict[str, Any]:
    """:func:`.common.load_results` of a translation comparison, with the LM and MT keys."""
    return load_results(directory, _check_mt_method)


def bleu_gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank gap SST closes on the headline (default: test BLEU).

    ``(sst - best_other) / (full - best_other)`` with ``best_other`` the best value among the
    low-rank baselines present; the rule of :func:`.common.gap`: None when a number is
    missing or the best baseline is not worse than full rank.

    Args:
        results: reads ``headline`` and ``methods[*][headline key]``.
    """
    return headline_gap(results, "mt")[1].share


def _gap_sentence(results: Mapping[str, Any]) -> str:
    metric, result = headline_gap(results, "mt")
    return gap_sentence(result, metric.label)


_grouped = partial(number_text, grouped=True)  # "12,345.60"

_COLUMNS = [*accounting_columns(),
            ("target tokens/s", lambda e: _grouped(e.get("target_tokens_per_s"), 0)),
            seeds_column("val loss", "val_loss", partial(_grouped, digits=3), digits=3),
            seeds_column("val ppl", "val_ppl", _grouped),
            seeds_column("test BLEU", "test_bleu", _grouped)]


def bleu_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method | trainable params | share | grad+optimizer MiB | step ms |
    target tokens/s | val loss | val ppl | test BLEU (mean ± std over seeds when several)."""
    return methods_table(results, _COLUMNS)


def _bleu_note(results: Mapping[str, Any]) -> str:
    signatures = sorted({e["bleu_signature"] for e in results["methods"].values()})
    decodings = sorted({(e.get("decoding") or {}).get("beam_size", "?") for e in
                        results["methods"].values()}, key=str)
    alphas = sorted({(e.get("decoding") or {}).get("length_penalty", "?") for e in
                     results["methods"].values()}, key=str)
    return (f"Test BLEU: sacreBLEU on detokenised, cased text, signature "
            f"{', '.join(f'`{s}`' for s in signatures)}; beam size "
            f"{', '.join(map(str, decodings))}, GNMT length penalty alpha "
            f"{', '.join(map(str, alphas))}. Validation loss and perplexity: token NLL "
            f"without label smoothing. Share: trainable parameters over all parameters.")


def _examples(results: Mapping[str, Any]) -> list[str]:
    methods = results["methods"]
    names = ordered_methods(methods)
    count = max((len(methods[n].get("examples") or []) for n in names), default=0)
    lines: list[str] = []
    for i in range(count):
        # Source and reference are the same for every method: take the first that has them.
        first = next(methods[n]["examples"][i] for n in names
                     if len(methods[n].get("examples") or []) > i)
        lines += [f"### Example {i + 1}", "", f"- source: {first['source']}",
                  f"- reference: {first['reference']}"]
        for name in names:
            examples = methods[name].get("examples") or []
            if len(examples) > i:
                lines.append(f"- {display(name)}: {examples[i]['hypothesis']}")
        lines.append("")
    return lines or ["(no examples recorded)", ""]


def mt_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of a translation comparison."""
    return report_markdown(
        results["title"], f"Task: {results['task']}", results["settings"], bleu_table(results),
        [_gap_sentence(results)], PLOT_FILES, note=_bleu_note(results),
        appendix=["", "## Translation examples (test set)", "", *_examples(results)])


def render_mt_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``val_loss.png``, ``spectra.png``, then ``report.md``, from ``results.json``
    (:func:`.common.render_report`: the returned paths, the errors)."""
    return render_report(directory, load_mt_results, _PLOTTERS, PLOT_FILES, mt_report_markdown)
