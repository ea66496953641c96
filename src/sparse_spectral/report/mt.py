"""Render a translation comparison (``sst compare mt``) from its ``results.json``.

The file follows :mod:`sparse_spectral.report`'s schema (``task`` is ``"mt"``; ``val_ppl``
is the validation perplexity) and adds, per method::

    "test_bleu": float,               # sacreBLEU on the detokenised test set
    "bleu_signature": str,            # sacreBLEU's signature of that score
    "target_tokens_per_s": float | null,
    "decoding": {"beam_size": int, "length_penalty": float, ...},
    "examples": [{"source": str, "reference": str, "hypothesis": str}, ...]

:func:`render_mt_report` writes ``report.md`` (settings, the BLEU table, the share of the BLEU
gap SST closes, translation examples side by side), ``val_loss.png`` and ``spectra.png``
(the LM report's plots). The Euclidean and hyperbolic models share this format.
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
    _display,
    _is_number,
    _settings_lines,
    gap_closed,
    load_results,
    ordered_methods,
    plot_spectra,
    plot_val_loss,
    render_report,
    write_report_files,
)
from .report_graph import is_graph_results, render_graph_report

__all__ = ["bleu_gap_closed", "bleu_table", "mt_report_markdown", "render_mt_report",
           "render_task_report"]

REPORT_FILE = "report.md"
PLOT_FILES = {"val_loss": "val_loss.png", "spectra": "spectra.png"}
_PLOTTERS = {"val_loss": plot_val_loss, "spectra": plot_spectra}


def _check_mt(results: Mapping[str, Any], path: Path) -> None:
    """The MT keys on top of the shared schema (which :func:`load_results` checked)."""
    for name, entry in results["methods"].items():
        where = f"{path}: methods[{name!r}]"
        bleu = entry.get("test_bleu")
        if not _is_number(bleu):
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


def _bleu(methods: Mapping[str, Any], name: str) -> float | None:
    value = (methods.get(name) or {}).get("test_bleu")
    return float(value) if _is_number(value) and math.isfinite(value) else None


def bleu_gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank BLEU gap that SST closes.

    ``(sst - best_other) / (full - best_other)`` with ``best_other`` the highest test BLEU
    among the low-rank baselines present. It is :func:`report.gap_closed` applied to
    ``-BLEU`` (lower is better there, as for perplexity), so both reports share one rule:
    None when a number is missing or the best baseline is not worse than full rank.
    """
    negated = {name: {"val_ppl": -bleu} for name in results["methods"]
               if (bleu := _bleu(results["methods"], name)) is not None}
    return gap_closed({"methods": negated})


def _gap_sentence(results: Mapping[str, Any]) -> str:
    methods = results["methods"]
    share = bleu_gap_closed(results)
    full, sst = _bleu(methods, "full"), _bleu(methods, "sst")
    baselines = [(b, name) for name in LOW_RANK_BASELINES
                 if (b := _bleu(methods, name)) is not None]
    if share is None:
        if full is None or sst is None or not baselines:
            return ("Share of the BLEU gap closed by SST: not computed; it needs full rank, "
                    "SST and a low-rank baseline (LoRA, ReLoRA*, GaLore).")
        best, name = max(baselines)
        return (f"Share of the BLEU gap closed by SST: not computed; the best other low-rank "
                f"method ({_display(name)}, {best:.2f}) is not worse than full rank "
                f"({full:.2f}), so there is no gap to close.")
    best, name = max(baselines)
    return (f"SST closes {100 * share:.1f}% of the test-BLEU gap between the best other "
            f"low-rank method ({_display(name)}, {best:.2f}) and full rank ({full:.2f}): "
            f"(SST - best other) / (full - best other) with SST at {sst:.2f}.")


def _number(value: Any, digits: int = 2) -> str:
    if not _is_number(value):
        return "-"
    return f"{value:,.{digits}f}" if math.isfinite(value) else str(value)


def bleu_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method | trainable params | share | grad+optimizer MiB | step ms |
    target tokens/s | val loss | val ppl | test BLEU."""
    lines = ["| method | trainable params | share | grad+optimizer bytes (MiB) | step time (ms) "
             "| target tokens/s | val loss | val ppl | test BLEU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ordered_methods(results["methods"]):
        e = results["methods"][name]
        share = (f"{100 * e['trainable_params'] / e['total_params']:.1f}%"
                 if e["total_params"] else "-")
        cells = [name, f"{e['trainable_params']:,d}", share,
                 f"{e['grad_optimizer_bytes'] / _MIB:.2f}", f"{1000 * e['step_time_s']:.1f}",
                 _number(e.get("target_tokens_per_s"), 0), _number(e["val_loss"], 3),
                 _number(e["val_ppl"]), _number(e["test_bleu"])]
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
        first = next(methods[n]["examples"][i] for n in names
                     if len(methods[n].get("examples") or []) > i)
        lines += [f"### Example {i + 1}", "", f"- source: {first['source']}",
                  f"- reference: {first['reference']}"]
        for name in names:
            examples = methods[name].get("examples") or []
            if len(examples) > i:
                lines.append(f"- {_display(name)}: {examples[i]['hypothesis']}")
        lines.append("")
    return lines or ["(no examples recorded)", ""]


def mt_report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text of a translation comparison."""
    lines = [f"# {results['title']}", "", f"Task: {results['task']}", "", "## Settings", ""]
    lines += _settings_lines(results["settings"])
    lines += ["", "## Results", "", bleu_table(results), "", _gap_sentence(results), "",
              _bleu_note(results), "", "## Figures", ""]
    lines += [f"![{key.replace('_', ' ')}]({file})" for key, file in PLOT_FILES.items()]
    lines += ["", "## Translation examples (test set)", ""] + _examples(results)
    return "\n".join(lines).rstrip("\n") + "\n"


def render_mt_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.md``, ``val_loss.png`` and ``spectra.png`` from ``results.json``.

    Plots first, ``report.md`` last, each atomically (as :func:`report.render_report`).

    Raises:
        FileNotFoundError: ``results.json`` does not exist.
        ValueError: it is invalid (the message names the path and the key).
    """
    results = load_results(directory)
    _check_mt(results, Path(directory) / "results.json")
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, mt_report_markdown)


def render_task_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Render the report of whichever task wrote ``<directory>/results.json``."""
    if is_graph_results(directory):  # graph results have their own schema
        return render_graph_report(directory)
    task = load_results(directory).get("task")
    if task == "mt":
        return render_mt_report(directory)
    if task == "images":
        from .report_images import render_images_report

        return render_images_report(directory)
    return render_report(directory)
