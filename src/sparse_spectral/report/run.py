"""The report of one training run (``sst train TASK``) from its run folder.

A run folder holds ``summary.json`` (the final figures, written at the end) and
``metrics.jsonl`` (one JSON object per log or evaluation: ``{"step": int, ...}``; the logger
writes non-finite numbers as the strings ``"nan"``, ``"inf"``, ``"-inf"``). Nothing here
knows a task: the report shows whatever numbers the files hold.

:func:`render_run_report` writes next to them::

    report.md        method, task (when recorded), settings, size and speed, final figures,
                     the validation curve as a table, the training loss in a sentence
    val_loss.png     validation loss against step ("no data" when the run logged none)
    <val_key>.png    one plot per other per-evaluation metric (val_accuracy.png, ...)
    train_loss.png   training loss against step
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import is_number, read_json, write_report_files
from .markdown import MIB, figure_lines, markdown_table, params_share, settings_lines
from .plots import finite_points, new_figure, no_data

__all__ = ["METRICS_FILE", "SUMMARY_FILE", "Run", "eval_keys", "final_figures",
           "is_run_folder", "load_run", "render_run_report", "run_report_markdown"]

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
_SIZE_KEYS = ("trainable_params", "total_params", "grad_optimizer_bytes", "step_time_s",
              "wall_time_s")
_NESTED = ("val", "test")  # graph runs keep the best epoch's metrics in these dicts
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MAX_ROWS = 40  # longer validation curves are thinned in the table (the plot has all)


@dataclass(frozen=True)
class Run:
    """One run folder's content: ``summary.json`` and the records of ``metrics.jsonl``."""

    directory: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]


def is_run_folder(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds both ``summary.json`` and ``metrics.jsonl``."""
    folder = Path(directory)
    return (folder / SUMMARY_FILE).is_file() and (folder / METRICS_FILE).is_file()


def _value(value: Any) -> Any:
    return _NON_FINITE.get(value, value) if isinstance(value, str) else value


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number} is not valid JSON: {err}") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} must be an object, got {record!r}")
        records.append({key: _value(value) for key, value in record.items()})
    return records


def load_run(directory: str | os.PathLike) -> Run:
    """Read ``<directory>/summary.json`` and ``<directory>/metrics.jsonl``.

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: a file is not valid JSON (JSONL), or the summary is not an object.
    """
    folder = Path(directory)
    summary = read_json(folder / SUMMARY_FILE, "run `sst train TASK` to create it")
    if not isinstance(summary, dict):
        raise ValueError(f"{folder / SUMMARY_FILE}: must be an object, got {summary!r}")
    metrics = folder / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no such file (run `sst train TASK` to create it)")
    return Run(folder, summary, _read_records(metrics))


# --------------------------------------------------------------------------
# What the files hold
# --------------------------------------------------------------------------


def final_figures(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numeric final figures of a summary, in file order.

    Reads every top-level number (bools and the size/speed keys excluded) and the numbers of
    the nested ``val`` and ``test`` dicts, named ``val_<key>`` / ``test_<key>``.
    """
    figures = {key: value for key, value in summary.items()
               if is_number(value) and key not in _SIZE_KEYS}
    for split in _NESTED:
        nested = summary.get(split)
        if isinstance(nested, dict):
            figures.update({f"{split}_{key}": value for key, value in nested.items()
                            if is_number(value) and f"{split}_{key}" not in figures})
    return figures


def eval_keys(records: list[Mapping[str, Any]]) -> list[str]:
    """The per-evaluation metrics (``val_*`` keys with numbers): ``val_loss`` first."""
    keys: list[str] = []
    for record in records:
        keys += [key for key, value in record.items()
                 if key.startswith("val_") and is_number(value) and key not in keys]
    return sorted(keys, key=lambda key: key != "val_loss")  # stable: file order otherwise


def _x_key(records: list[Mapping[str, Any]]) -> str:
    # Graph runs log per epoch (their "step" is the epoch); say so in labels.
    return "epoch" if any("epoch" in record for record in records) else "step"


def _series(records: list[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    x_key = _x_key(records)
    points = [(record.get(x_key, record.get("step")), record.get(key)) for record in records]
    points = [(x, y) for x, y in points if is_number(x) and is_number(y)]
    return [x for x, _ in points], [y for _, y in points]


# --------------------------------------------------------------------------
# The Markdown report
# --------------------------------------------------------------------------


def _number(value: Any) -> str:
    if not is_number(value):
        return "-"
    if isinstance(value, int):
        return str(value)  # steps, seeds, counts: no thousands separator
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _task(summary: Mapping[str, Any]) -> str | None:
    settings = summary.get("settings")
    task = summary.get("task") or (settings.get("task") if isinstance(settings, dict) else None)
    return task if isinstance(task, str) else None


def _size_lines(summary: Mapping[str, Any]) -> list[str]:
    lines = []
    if is_number(summary.get("trainable_params")):
        total = summary.get("total_params")
        share = f" ({params_share(summary)} of {total:,.0f})" if is_number(total) else ""
        lines.append(f"- trainable parameters: {summary['trainable_params']:,.0f}{share}")
    if is_number(summary.get("grad_optimizer_bytes")):
        lines.append(f"- gradient + optimizer-state bytes: "
                     f"{summary['grad_optimizer_bytes'] / MIB:.2f} MiB")
    if is_number(summary.get("step_time_s")):
        lines.append(f"- step time (median): {1000 * summary['step_time_s']:.1f} ms")
    if is_number(summary.get("wall_time_s")):
        lines.append(f"- wall time: {summary['wall_time_s']:.1f} s")
    return lines or ["- (not recorded)"]


def _thinned(rows: list[Any]) -> list[Any]:
    """At most about ``_MAX_ROWS`` evenly spaced rows, always with the last one."""
    if len(rows) <= _MAX_ROWS:
        return rows
    every = math.ceil(len(rows) / _MAX_ROWS)
    kept = rows[::every]
    return kept if kept[-1] is rows[-1] else [*kept, rows[-1]]


def _curve_table(records: list[Mapping[str, Any]]) -> list[str]:
    keys = eval_keys(records)
    rows = [record for record in records if any(is_number(record.get(k)) for k in keys)]
    if not rows:
        return ["(no validation recorded in metrics.jsonl)"]
    x_key = _x_key(records)
    shown = _thinned(rows)
    lines = markdown_table(
        [x_key, *keys], ([_number(record.get(x_key, record.get("step"))),
                         *(_number(record.get(key)) for key in keys)] for record in shown),
        left=0)
    if len(shown) < len(rows):
        lines += ["", f"{len(shown)} of {len(rows)} evaluations shown; the plots have all."]
    return lines


def _train_sentence(records: list[Mapping[str, Any]]) -> str:
    steps, losses = _series(records, "train_loss")
    if not steps:
        return "Training loss: not logged."
    x_key = _x_key(records)
    first = f"{_number(losses[0])} at {x_key} {steps[0]}"
    if len(steps) == 1:
        return f"Training loss: {first} (1 logged point; train_loss.png)."
    return (f"Training loss: {first}, {_number(losses[-1])} at {x_key} {steps[-1]} "
            f"({len(steps)} logged points; train_loss.png).")


def run_report_markdown(run: Run) -> str:
    """The whole ``report.md`` text of one run."""
    summary = run.summary
    method = summary.get("method") if isinstance(summary.get("method"), str) else "unknown"
    lines = [f"# Training run: {method}", ""]
    task = _task(summary)
    if task:
        lines += [f"Task: {task}", ""]
    # Top-level strings (model, dataset, BLEU signature, ...) say what was run.
    recorded = {k: v for k, v in summary.items()
                if isinstance(v, str) and k not in ("method", "task")}
    if recorded:
        lines += [f"- **{key}**: {value}" for key, value in recorded.items()] + [""]
    lines += ["## Settings", ""]
    settings = summary.get("settings")
    lines += settings_lines(settings if isinstance(settings, dict) else {})
    lines += ["", "## Size and speed", ""] + _size_lines(summary)
    figures = final_figures(summary)
    lines += ["", "## Final figures (summary.json)", ""]
    if figures:
        lines += markdown_table(["figure", "value"],
                                ([key, _number(value)] for key, value in figures.items()))
    else:
        lines.append("(none recorded)")
    lines += ["", "## Validation curve (metrics.jsonl)", ""] + _curve_table(run.records)
    lines += ["", _train_sentence(run.records), "", "## Figures", ""]
    lines += figure_lines(_plot_files(run))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Plots and writing
# --------------------------------------------------------------------------


def _plot_files(run: Run) -> dict[str, str]:
    """``{metric: file}``: val_loss, every other val_* metric, train_loss."""
    keys = ["val_loss"] + [k for k in eval_keys(run.records) if k != "val_loss"]
    keys.append("train_loss")
    # Metric names come from the file: keep file names to safe characters.
    return {key: re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".png" for key in keys}


def _plotter(key: str):
    def plot(run: Run):
        fig = new_figure()
        ax = fig.add_subplot()
        xs, ys = finite_points(*_series(run.records, key))
        label = key.replace("_", " ")
        if not xs:
            no_data(ax, f"no {label} recorded")
            return fig
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None, color="tab:blue")
        ax.set(xlabel=_x_key(run.records), ylabel=label, title=label)
        ax.grid(alpha=0.3)
        return fig

    return plot


def render_run_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Write the run's plots, then ``report.md`` (each atomically).

    Returns:
        ``{"report": report.md, "val_loss": val_loss.png, ..., "train_loss": ...}`` paths.

    Raises:
        FileNotFoundError: ``summary.json`` or ``metrics.jsonl`` is missing.
        ValueError: one of them is invalid (the message names the file).
    """
    run = load_run(directory)
    files = _plot_files(run)
    plotters = {key: _plotter(key) for key in files}
    return write_report_files(directory, run, plotters, files, run_report_markdown)
