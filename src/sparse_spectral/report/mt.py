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

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import (
    MIB,
    Gap,
    display,
    figure_lines,
    gap,
    headline,
    is_number,
    load_results,
    metric_name,
    metric_values,
    ordered_methods,
    params_share,
    plot_spectra,
    plot_val_loss,
    settings_lines,
    with_seed_std,
    write_report_files,
)
from .lm import check_lm_method

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
    """Read and check ``<directory>/results.json`` of a translation comparison.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is invalid (the message names the path and the key).
    """
    return load_results(directory, _check_mt_method)


def _gap(results: Mapping[str, Any]) -> Gap:
    metric = headline(results, "mt")
    return gap(metric_values(results["methods"], metric.key), metric.higher_is_better)


def bleu_gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank gap SST closes on the headline (default: test BLEU).

    ``(sst - best_other) / (full - best_other)`` with ``best_other`` the best value among the
    low-rank baselines present; the rule of :func:`.common.gap`: None when a number is
    missing or the best baseline is not worse than full rank.

    Args:
        results: reads ``headline`` and ``methods[*][headline key]``.
    """
    return _gap(results).share


def _gap_sentence(results: Mapping[str, Any]) -> str:
    label = headline(results, "mt").label
    result = _gap(results)
    if result.missing:
        return (f"Share of the {metric_name(label)} gap closed by SST: not computed; it needs "
                "full rank, SST and a low-rank baseline (LoRA, ReLoRA*, GaLore).")
    name, best = result.best
    if result.share is None:
        return (f"Share of the {metric_name(label)} gap closed by SST: not computed; the best "
                f"other low-rank method ({display(name)}, {best:.2f}) is not worse than full "
                f"rank ({result.full:.2f}), so there is no gap to close.")
    return (f"SST closes {100 * result.share:.1f}% of the {label.replace(' ', '-')} gap "
            f"between the best other low-rank method ({display(name)}, {best:.2f}) and full "
            f"rank ({result.full:.2f}): (SST - best other) / (full - best other) with SST at "
            f"{result.sst:.2f}.")


def _number(value: Any, digits: int = 2) -> str:
    if not is_number(value):
        return "-"
    return f"{value:,.{digits}f}" if math.isfinite(value) else str(value)


def bleu_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method | trainable params | share | grad+optimizer MiB | step ms |
    target tokens/s | val loss | val ppl | test BLEU (mean ± std over seeds when several)."""
    lines = ["| method | trainable params | share | grad+optimizer bytes (MiB) | step time (ms) "
             "| target tokens/s | val loss | val ppl | test BLEU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ordered_methods(results["methods"]):
        e = results["methods"][name]
        cells = [name, f"{e['trainable_params']:,d}", params_share(e),
                 f"{e['grad_optimizer_bytes'] / MIB:.2f}", f"{1000 * e['step_time_s']:.1f}",
                 _number(e.get("target_tokens_per_s"), 0),
                 with_seed_std(_number(e["val_loss"], 3), e, "val_loss", digits=3),
                 with_seed_std(_number(e["val_ppl"]), e, "val_ppl"),
                 with_seed_std(_number(e["test_bleu"]), e, "test_bleu")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    lines = [f"# {results['title']}", "", f"Task: {results['task']}", "", "## Settings", ""]
    lines += settings_lines(results["settings"])
    lines += ["", "## Results", "", bleu_table(results), "", _gap_sentence(results), "",
              _bleu_note(results), "", "## Figures", ""]
    lines += figure_lines(PLOT_FILES)
    lines += ["", "## Translation examples (test set)", ""] + _examples(results)
    return "\n".join(lines).rstrip("\n") + "\n"


def render_mt_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``val_loss.png``, ``spectra.png``, then ``report.md`` (each atomically).

    Returns:
        ``{"report": ..., "val_loss": ..., "spectra": ...}`` paths.

    Raises:
        FileNotFoundError: ``results.json`` does not exist.
        ValueError: it is invalid (the message names the path and the key).
    """
    results = load_mt_results(directory)
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, mt_report_markdown)
