"""Reports from result files: ``report.md`` and plots, one module per kind of folder.

:func:`render` looks at a folder and writes the report that fits it::

    results.json                   a comparison (``sst compare TASK``): lm, mt, graph, images
    ablation.json                  an ablation (``sst ablate TASK``)
    summary.json + metrics.jsonl   one training run (``sst train TASK``)

The package reads result files only (it imports nothing of sparse_spectral but ``_util``),
so a report can be re-rendered wherever the files are. Modules: :mod:`.common` (loading,
validation, headline metric, gap share, method names, writing), :mod:`.markdown` (cells,
tables, the gap sentence, the report layout), :mod:`.plots` (figures), then one per report:
:mod:`.lm`, :mod:`.mt`, :mod:`.graph`, :mod:`.images`, :mod:`.ablation`, :mod:`.run`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .ablation import ABLATION_FILE, load_ablation, render_ablation_report
from .common import (
    DEFAULT_HEADLINES,
    LOW_RANK_BASELINES,
    RESULTS_FILE,
    Headline,
    best_baseline,
    headline,
    load_results,
    read_json,
    share_of_gap,
)
from .graph import gap_shares, load_graph_results, render_graph_report
from .images import accuracy_gap_closed, render_images_report
from .lm import gap_closed, load_lm_results, render_lm_report, results_table
from .mt import bleu_gap_closed, render_mt_report
from .run import METRICS_FILE, SUMMARY_FILE, is_run_folder, render_run_report

__all__ = [
    "DEFAULT_HEADLINES", "LOW_RANK_BASELINES", "RESULTS_FILE", "TASK_REPORTS", "Headline",
    "accuracy_gap_closed", "best_baseline", "bleu_gap_closed", "gap_closed", "gap_shares",
    "headline", "load_ablation", "load_graph_results", "load_lm_results", "load_results", "render",
    "render_ablation_report", "render_graph_report", "render_images_report", "render_lm_report",
    "render_mt_report", "render_run_report", "results_table", "share_of_gap",
]

#: The report of each ``results.json`` task.
TASK_REPORTS: dict[str, Callable[[str | os.PathLike], dict[str, Path]]] = {
    "lm": render_lm_report,
    "mt": render_mt_report,
    "graph": render_graph_report,
    "images": render_images_report,
}


def _looked_for() -> str:
    return (f"looked for {RESULTS_FILE} (a comparison; tasks: {', '.join(TASK_REPORTS)}), "
            f"{ABLATION_FILE} (an ablation) and {SUMMARY_FILE} with {METRICS_FILE} "
            "(one `sst train` run)")


def render(directory: str | os.PathLike) -> dict[str, Path]:
    """Write the report of whatever ``directory`` holds; return ``{name: path}`` written.

    Reads, in this order of precedence: ``results.json`` (dispatched on its ``"task"``),
    ``ablation.json``, or ``summary.json`` + ``metrics.jsonl`` (a single run). Writes the
    plots, then the Markdown report (``report.md``; ``ablation.md`` for an ablation).

    Raises:
        ValueError: the folder does not exist, holds none of these files, or its
            ``results.json`` names an unknown task (the message names the folder, the files
            looked for and the tasks known); or a file is invalid (naming the file and key).
        FileNotFoundError: a file vanished while it was read.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; {_looked_for()}")
    results_path = folder / RESULTS_FILE
    if results_path.is_file():
        results = read_json(results_path, "run `sst compare TASK` to create it")
        task = results.get("task") if isinstance(results, dict) else None
        if task not in TASK_REPORTS:
            raise ValueError(f"{results_path}: unknown task {task!r}; the report knows tasks "
                             f"{', '.join(TASK_REPORTS)}")
        return TASK_REPORTS[task](folder)
    if (folder / ABLATION_FILE).is_file():
        return render_ablation_report(folder)
    if is_run_folder(folder):
        return render_run_report(folder)
    raise ValueError(f"{folder}: nothing to report; {_looked_for()}")
