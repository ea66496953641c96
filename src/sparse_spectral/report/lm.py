"""Render a comparison report folder from its ``results.json``.

``sst compare lm`` writes ``<dir>/results.json``; ``sst report DIR`` (and the end of the
comparison) calls :func:`render_report`, which writes next to it::

    report.md      title, settings, the results table, the share of the gap SST closes
    val_loss.png   validation loss against step, one line per method
    spectra.png    singular values of the recorded layers, one subplot per layer (log y)
    pruning.png    perplexity against the singular-value pruning ratio (SPEC section 6)

Schema of ``results.json`` (required keys unless marked optional; extra keys are ignored)::

    {"task": "lm",
     "title": str,
     "settings": {free-form: model, rank, steps, corpus, ...},
     "methods": {"<method name>": {
         "trainable_params": int, "total_params": int,
         "grad_optimizer_bytes": int,      # gradients + optimizer state bytes, measured
         "step_time_s": float,             # median seconds per optimizer step
         "val_loss": float, "val_ppl": float,          # final validation
         "test_ppl": float | null,                     # optional
         "curve": [{"step": int, "val_loss": float,
                    "train_loss": float | null}, ...],  # train_loss optional
         "spectra": {"<layer name>": [singular values, descending]},    # optional
         "pruning": [{"ratio": float, "ppl": float}, ...] | null        # optional
      }, ...}}

Perplexities may be ``NaN`` or ``Infinity`` (Python's ``json`` reads and writes both) when
a run diverged; they are shown as such and never count as the best baseline.

Every file is written to a temporary name and moved into place, so an interrupted render
never leaves a half-written file under its final name. matplotlib is imported only when
plots are drawn, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LOW_RANK_BASELINES",
    "RESULTS_FILE",
    "best_baseline",
    "gap_closed",
    "load_results",
    "render_report",
    "results_table",
    "share_of_gap",
]

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOT_FILES = {"val_loss": "val_loss.png", "spectra": "spectra.png", "pruning": "pruning.png"}

# The low-rank methods SST is compared against (SPEC section 8).
LOW_RANK_BASELINES = ("lora", "relora", "galore")
# Table and legend order; other methods (ablation variants) follow in file order.
_METHOD_ORDER = ("full", "lora", "relora", "galore", "sst")
_DISPLAY = {"full": "full rank", "lora": "LoRA", "relora": "ReLoRA*", "galore": "GaLore",
            "sst": "SST"}

_TOP_KEYS = ("task", "title", "settings", "methods")
_METHOD_NUMBERS = ("trainable_params", "total_params", "grad_optimizer_bytes", "step_time_s",
                   "val_loss", "val_ppl")
_MIB = 2 ** 20


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(mapping: Mapping, key: str, where: str, path: Path) -> Any:
    if key not in mapping:
        raise ValueError(f"{path}: {where} is missing key {key!r}")
    return mapping[key]


def _check_type(ok: bool, where: str, expected: str, value: Any, path: Path) -> None:
    if not ok:
        raise ValueError(f"{path}: {where} must be {expected}, got {value!r}")


def _check_points(points: Any, keys: tuple[str, ...], where: str, path: Path) -> None:
    """``points`` is a list of objects each holding the numeric ``keys``."""
    _check_type(isinstance(points, list), where, "a list", points, path)
    for i, point in enumerate(points):
        _check_type(isinstance(point, dict), f"{where}[{i}]", "an object", point, path)
        for key in keys:
            value = _require(point, key, f"{where}[{i}]", path)
            _check_type(_is_number(value), f"{where}[{i}][{key!r}]", "a number", value, path)


def _check_method(name: str, entry: Any, path: Path) -> None:
    where = f"methods[{name!r}]"
    _check_type(isinstance(entry, dict), where, "an object", entry, path)
    for key in _METHOD_NUMBERS:
        value = _require(entry, key, where, path)
        _check_type(_is_number(value), f"{where}[{key!r}]", "a number", value, path)
    test_ppl = entry.get("test_ppl")
    _check_type(test_ppl is None or _is_number(test_ppl), f"{where}['test_ppl']",
                "a number or null", test_ppl, path)
    _check_points(_require(entry, "curve", where, path), ("step", "val_loss"),
                  f"{where}['curve']", path)
    spectra = entry.get("spectra") or {}
    _check_type(isinstance(spectra, dict), f"{where}['spectra']", "an object", spectra, path)
    for layer, values in spectra.items():
        _check_type(isinstance(values, list) and all(map(_is_number, values)),
                    f"{where}['spectra'][{layer!r}]", "a list of numbers", values, path)
    if entry.get("pruning") is not None:
        _check_points(entry["pruning"], ("ratio", "ppl"), f"{where}['pruning']", path)


def validate_results(results: Any, path: Path) -> None:
    """Check ``results`` against the schema in the module docstring.

    Raises:
        ValueError: Naming ``path`` and the first missing key or wrong value.
    """
    _check_type(isinstance(results, dict), "the top level", "an object", results, path)
    for key in _TOP_KEYS:
        _require(results, key, "the top level", path)
    _check_type(isinstance(results["settings"], dict), "'settings'", "an object",
                results["settings"], path)
    methods = results["methods"]
    _check_type(isinstance(methods, dict) and bool(methods), "'methods'",
                "a non-empty object", methods, path)
    for name, entry in methods.items():
        _check_method(name, entry, path)


def load_results(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``<directory>/results.json``.

    Raises:
        FileNotFoundError: If the directory or the file does not exist.
        ValueError: If the file is not valid JSON or does not follow the schema.
    """
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (run `sst compare lm` to create it)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    validate_results(results, path)
    return results


# --------------------------------------------------------------------------
# The share of the gap closed
# --------------------------------------------------------------------------


def _ppl(methods: Mapping[str, Any], name: str) -> float | None:
    """Finite ``val_ppl`` of ``name``, or None when absent or diverged."""
    value = (methods.get(name) or {}).get("val_ppl")
    return float(value) if _is_number(value) and math.isfinite(value) else None


def best_baseline(values: Mapping[str, float | None],
                  higher_is_better: bool = False) -> tuple[str, float] | None:
    """The best finite value among the low-rank baselines present: ``(name, value)``.

    Args:
        values: method name -> metric (None or non-finite when missing or diverged).
        higher_is_better: True for accuracies/AUCs, False for perplexities.
    """
    present = [(value, name) for name in LOW_RANK_BASELINES
               if _is_number(value := values.get(name)) and math.isfinite(value)]
    if not present:
        return None
    value, name = max(present) if higher_is_better else min(present)
    return name, value


def share_of_gap(full: float, sst: float, best_other: float,
                 higher_is_better: bool = False) -> float | None:
    """``(best_other - sst) / (best_other - full)``, or None when there is no gap.

    The formula is the same for either direction of the metric; "no gap" means the best
    other low-rank method is not worse than full rank.
    """
    no_gap = best_other >= full if higher_is_better else best_other <= full
    return None if no_gap else (best_other - sst) / (best_other - full)


def _best_baseline(methods: Mapping[str, Any]) -> tuple[str, float] | None:
    return best_baseline({name: _ppl(methods, name) for name in LOW_RANK_BASELINES})


def _gap(results: Mapping[str, Any]) -> tuple[float | None, str]:
    """``(share, sentence)``: the share SST closes and a sentence explaining it."""
    methods = results.get("methods", {})
    full, sst, best = _ppl(methods, "full"), _ppl(methods, "sst"), _best_baseline(methods)
    missing = [label for label, value in (("full rank", full), ("SST", sst),
                                          ("a low-rank baseline (LoRA, ReLoRA*, GaLore)", best))
               if value is None]
    if missing:
        return None, ("Share of the gap closed by SST: not computed; no finite validation "
                      f"perplexity for {' or '.join(missing)}.")
    name, other = best
    share = share_of_gap(full, sst, other)
    if share is None:
        return None, (f"Share of the gap closed by SST: not computed; the best other low-rank "
                      f"method ({_display(name)}, {other:.2f}) is not worse than full rank "
                      f"({full:.2f}), so there is no gap to close.")
    return share, (f"SST closes {100 * share:.1f}% of the validation-perplexity gap between "
                   f"the best other low-rank method ({_display(name)}, {other:.2f}) and full "
                   f"rank ({full:.2f}): (best other - SST) / (best other - full) with SST at "
                   f"{sst:.2f}.")


def gap_closed(results: Mapping[str, Any]) -> float | None:
    """Share of the full-vs-low-rank perplexity gap that SST closes (SPEC section 8).

    ``(best_other - sst) / (best_other - full)`` with ``best_other`` the lowest validation
    perplexity among the low-rank baselines present (``lora``, ``relora``, ``galore``).
    1 means SST matches full rank, 0 means it is no better than the best baseline, and a
    negative value means it is worse.

    Args:
        results: The ``results.json`` content; only ``methods[*]["val_ppl"]`` is read.

    Returns:
        The share, or None when full rank, SST or every baseline is missing (or not
        finite), or when the best baseline is not worse than full rank (no gap).
    """
    return _gap(results)[0]


# --------------------------------------------------------------------------
# The Markdown report
# --------------------------------------------------------------------------


def _display(name: str) -> str:
    return _DISPLAY.get(name, name)


def ordered_methods(methods: Mapping[str, Any]) -> list[str]:
    """Method names in the canonical order, then the others in file order."""
    known = [name for name in _METHOD_ORDER if name in methods]
    return known + [name for name in methods if name not in _METHOD_ORDER]


def _format_ppl(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if math.isfinite(value) else str(value)


def _table_row(name: str, entry: Mapping[str, Any]) -> str:
    trainable, total = entry["trainable_params"], entry["total_params"]
    share = f"{100 * trainable / total:.1f}%" if total else "-"
    cells = [
        name, f"{trainable:,d}", share,
        f"{entry['grad_optimizer_bytes'] / _MIB:.2f}",
        f"{1000 * entry['step_time_s']:.1f}",
        _format_ppl(entry["val_ppl"]), _format_ppl(entry.get("test_ppl")),
    ]
    return "| " + " | ".join(cells) + " |"


def results_table(results: Mapping[str, Any]) -> str:
    """The Markdown results table, one row per method.

    Columns: method | trainable params | share (of all parameters) | grad+optimizer bytes
    (MiB) | step time (ms, median) | val ppl | test ppl (``-`` when not measured).
    """
    methods = results["methods"]
    lines = ["| method | trainable params | share | grad+optimizer bytes (MiB) | "
             "step time (ms) | val ppl | test ppl |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_table_row(name, methods[name]) for name in ordered_methods(methods)]
    return "\n".join(lines)


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    return [f"- **{key}**: {show(value)}" for key, value in settings.items()] or ["- (none)"]


def report_markdown(results: Mapping[str, Any]) -> str:
    """The whole ``report.md`` text."""
    _, sentence = _gap(results)
    lines = [f"# {results['title']}", "", f"Task: {results['task']}", "", "## Settings", ""]
    lines += _settings_lines(results["settings"])
    lines += ["", "## Results", "", results_table(results), "", sentence, "",
              "Share: trainable parameters over all parameters. Gradient and optimizer-state "
              "bytes are measured from the tensors; step time is the median per optimizer "
              "step.", "", "## Figures", ""]
    lines += [f"![{key.replace('_', ' ')}]({file})" for key, file in PLOT_FILES.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------


def _new_figure(width: float = 6.4, height: float = 4.0):
    """A figure not registered with pyplot, saved through the Agg canvas.

    Building ``Figure`` directly (matplotlib's recipe for web servers) needs no display and,
    unlike ``matplotlib.use("Agg")``, leaves the caller's pyplot backend alone (notebooks).
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _colors(names: list[str]) -> dict[str, Any]:
    """One colour per method, the same in every plot."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _finite_points(xs: list[float], ys: list[float], positive: bool = False):
    keep = [(x, y) for x, y in zip(xs, ys)
            if math.isfinite(y) and (y > 0 or not positive)]
    return [x for x, _ in keep], [y for _, y in keep]


def plot_val_loss(results: Mapping[str, Any]):
    """Validation loss against optimizer step, one line per method."""
    fig = _new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    colors, drawn = _colors(names), 0
    for name in names:
        curve = results["methods"][name]["curve"]
        steps, losses = _finite_points([p["step"] for p in curve],
                                       [p["val_loss"] for p in curve])
        if steps:
            ax.plot(steps, losses, marker=".", color=colors[name], label=_display(name))
            drawn += 1
    if not drawn:
        _no_data(ax, "no validation curve recorded")
        return fig
    ax.set(xlabel="step", ylabel="validation loss", title="Validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _spectrum_layers(methods: Mapping[str, Any], names: list[str]) -> list[str]:
    layers: list[str] = []
    for name in names:
        layers += [layer for layer in methods[name].get("spectra") or {} if layer not in layers]
    return layers


def plot_spectra(results: Mapping[str, Any]):
    """Singular values (log y) by index, one subplot per recorded layer, a line per method."""
    methods = results["methods"]
    names = ordered_methods(methods)
    layers = _spectrum_layers(methods, names)
    fig = _new_figure(width=max(6.4, 4.0 * len(layers)), height=4.0)
    if not layers:
        _no_data(fig.add_subplot(), "no singular-value spectra recorded")
        return fig
    colors = _colors(names)
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, layer in zip(axes, layers):
        for name in names:
            values = (methods[name].get("spectra") or {}).get(layer)
            if values:
                index, sv = _finite_points(list(range(1, len(values) + 1)), values,
                                           positive=True)  # log scale: drop zeros
                ax.plot(index, sv, color=colors[name], label=_display(name))
        ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)  # indices are whole numbers
        ax.set(xlabel="index", ylabel="singular value", title=layer)
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig


def plot_pruning(results: Mapping[str, Any]):
    """Validation perplexity (log y) against the pruning ratio, one line per method."""
    fig = _new_figure()
    ax = fig.add_subplot()
    names = ordered_methods(results["methods"])
    colors, drawn = _colors(names), 0
    for name in names:
        points = results["methods"][name].get("pruning") or []
        ratios, ppl = _finite_points([p["ratio"] for p in points], [p["ppl"] for p in points],
                                     positive=True)
        if ratios:
            ax.plot(ratios, ppl, marker="o", color=colors[name], label=_display(name))
            drawn += 1
    if not drawn:
        _no_data(ax, "no pruning data recorded")
        return fig
    ax.set_yscale("log")
    ax.set(xlabel="pruning ratio (share of singular values removed)",
           ylabel="validation perplexity", title="Singular-value pruning")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


_PLOTTERS = {"val_loss": plot_val_loss, "spectra": plot_spectra, "pruning": plot_pruning}


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _write_atomically(path: Path, write) -> None:
    from ._util.atomic import atomic_write

    atomic_write(path, write)


def _save_figure(fig, path: Path) -> None:
    # format given explicitly: the temporary file's suffix is not ".png".
    _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def render_report(directory: str | os.PathLike) -> dict[str, Path]:
    """Render ``report.md`` and the three plots from ``<directory>/results.json``.

    The plots are written first and ``report.md`` last, each atomically (temporary file,
    then ``os.replace``), so an existing ``report.md`` always comes with its figures.

    Args:
        directory: The comparison folder.

    Returns:
        ``{"report": report.md, "val_loss": val_loss.png, "spectra": spectra.png,
        "pruning": pruning.png}`` paths. Plots without data show a "no data" note.

    Raises:
        FileNotFoundError: If ``results.json`` does not exist.
        ValueError: If it is invalid; the message names the path and the key.
    """
    results = load_results(directory)
    return write_report_files(directory, results, _PLOTTERS, PLOT_FILES, report_markdown)


def write_report_files(directory: str | os.PathLike, results: Any,
                       plotters: Mapping[str, Callable[[Any], Any]],
                       plot_files: Mapping[str, str], markdown: Callable[[Any], str],
                       report_file: str = REPORT_FILE) -> dict[str, Path]:
    """Write every plot, then the Markdown report, each atomically; return their paths.

    The report goes last so that an existing report always comes with its figures.

    Args:
        directory: the output folder.
        results: whatever the plotters and ``markdown`` read.
        plotters: key -> function returning a matplotlib figure of ``results``.
        plot_files: key -> file name of that figure.
        markdown: function returning the report's text.
        report_file: the report's file name.

    Returns:
        ``{"report": path, **{key: plot path}}``.
    """
    directory = Path(directory)
    written: dict[str, Path] = {}
    for key, plot in plotters.items():
        path = directory / plot_files[key]
        _save_figure(plot(results), path)
        written[key] = path
    report = directory / report_file
    text = markdown(results)
    _write_atomically(report, lambda tmp: Path(tmp).write_text(text))
    return {"report": report, **written}
