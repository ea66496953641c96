"""What every report shares: reading and checking result files, the headline metric, the gap
SST closes, the names and order of methods, and writing a report's files atomically.

The common part of a comparison's ``results.json`` (every task writes it)::

    {"task": "lm" | "mt" | "graph" | "images",
     "title": str,
     "settings": {free-form},
     "headline": {"key": str, "label": str, "higher_is_better": bool},   # optional
     "methods": {"<method name>": {
         "trainable_params": int, "total_params": int,
         "grad_optimizer_bytes": int,      # gradients + optimizer state bytes, measured
         "step_time_s": float,             # median seconds per optimizer step
         ...task keys (see the task's module)}, ...}}

``headline`` names the summary key that is "the" metric of the comparison (the gap SST closes
is measured on it). Files written before it existed have none; :data:`DEFAULT_HEADLINES`
then gives the metric each task always used.

The Markdown of the reports is :mod:`.markdown`'s, their figures :mod:`.plots`'.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._util.atomic import atomic_write, atomic_write_text

__all__ = [
    "DEFAULT_HEADLINES", "Gap", "Headline", "LOW_RANK_BASELINES", "REPORT_FILE", "RESULTS_FILE",
    "best_baseline", "check_numbers", "check_points", "check_spectra", "check_type", "display",
    "finite", "gap", "headline", "headline_gap", "is_number", "load_results", "metric_name",
    "metric_values", "ordered_methods", "read_json", "render_report", "require", "save_figure",
    "share_of_gap", "validate_results", "write_report_files",
]

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"

# The low-rank methods SST is compared against (SPEC section 8).
LOW_RANK_BASELINES = ("lora", "relora", "galore", "apollo", "apollo_mini")
# Table and legend order; other methods (ablation variants) follow in file order.
METHOD_ORDER = ("full", "lora", "relora", "galore", "apollo", "apollo_mini", "sst")
DISPLAY = {"full": "full rank", "lora": "LoRA", "relora": "ReLoRA*", "galore": "GaLore",
           "apollo": "APOLLO", "apollo_mini": "APOLLO-Mini", "sst": "SST"}

_TOP_KEYS = ("task", "title", "settings", "methods")
_ACCOUNTING = ("trainable_params", "total_params", "grad_optimizer_bytes", "step_time_s")


# --------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (missing or diverged)."""
    return float(value) if is_number(value) and math.isfinite(value) else None


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------


def read_json(path: Path, hint: str) -> Any:
    """Read the JSON file ``path``.

    Args:
        path: the file.
        hint: how to create it, appended to the "no such file" message.

    Raises:
        FileNotFoundError: no such file (the message names it and ``hint``).
        ValueError: not valid JSON (the message names the file).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({hint})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


def require(mapping: Mapping, key: str, where: str, path: Path) -> Any:
    """``mapping[key]``; a ValueError naming ``path``, ``where`` and ``key`` when absent."""
    if key not in mapping:
        raise ValueError(f"{path}: {where} is missing key {key!r}")
    return mapping[key]


def check_type(ok: bool, where: str, expected: str, value: Any, path: Path) -> None:
    """Raise a ValueError naming ``path``, ``where`` and ``value`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{path}: {where} must be {expected}, got {value!r}")


def check_numbers(entry: Mapping, keys: Iterable[str], where: str, path: Path) -> None:
    """Each of ``keys`` is present in ``entry`` and a number."""
    for key in keys:
        value = require(entry, key, where, path)
        check_type(is_number(value), f"{where}[{key!r}]", "a number", value, path)


def check_points(points: Any, keys: tuple[str, ...], where: str, path: Path) -> None:
    """``points`` is a list of objects each holding the numeric ``keys``."""
    check_type(isinstance(points, list), where, "a list", points, path)
    for i, point in enumerate(points):
        check_type(isinstance(point, dict), f"{where}[{i}]", "an object", point, path)
        check_numbers(point, keys, f"{where}[{i}]", path)


def check_spectra(entry: Mapping, where: str, path: Path) -> None:
    """``entry["spectra"]``, when present, maps layer names to lists of numbers."""
    spectra = entry.get("spectra") or {}
    check_type(isinstance(spectra, dict), f"{where}['spectra']", "an object", spectra, path)
    for layer, values in spectra.items():
        check_type(isinstance(values, list) and all(map(is_number, values)),
                   f"{where}['spectra'][{layer!r}]", "a list of numbers", values, path)


def _check_headline(declared: Any, path: Path) -> None:
    check_type(isinstance(declared, dict), "'headline'", "an object", declared, path)
    for key, kind, ok in (("key", "a str", str), ("label", "a str", str),
                          ("higher_is_better", "a bool", bool)):
        value = require(declared, key, "'headline'", path)
        check_type(isinstance(value, ok), f"'headline'[{key!r}]", kind, value, path)


MethodCheck = Callable[[str, Mapping[str, Any], str, Path], None]


def validate_results(results: Any, path: Path, check_method: MethodCheck | None = None) -> None:
    """Check the common keys of a comparison's results (module docstring).

    Args:
        results: the parsed ``results.json``.
        path: the file, for the messages.
        check_method: the task's own checks of one method, called as
            ``check_method(name, entry, where, path)`` right after that method's common keys,
            so the first problem of a method is reported whichever part it is in.

    Raises:
        ValueError: naming ``path`` and the first missing key or wrong value.
    """
    check_type(isinstance(results, dict), "the top level", "an object", results, path)
    for key in _TOP_KEYS:
        require(results, key, "the top level", path)
    check_type(isinstance(results["settings"], dict), "'settings'", "an object",
               results["settings"], path)
    if "headline" in results:
        _check_headline(results["headline"], path)
    methods = results["methods"]
    check_type(isinstance(methods, dict) and bool(methods), "'methods'",
               "a non-empty object", methods, path)
    for name, entry in methods.items():
        where = f"methods[{name!r}]"
        check_type(isinstance(entry, dict), where, "an object", entry, path)
        check_numbers(entry, _ACCOUNTING, where, path)
        if check_method is not None:
            check_method(name, entry, where, path)


def load_results(directory: str | os.PathLike,
                 check_method: MethodCheck | None = None) -> dict[str, Any]:
    """Read ``<directory>/results.json`` and check its common keys (and the task's).

    Args:
        directory: the comparison folder.
        check_method: see :func:`validate_results`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid JSON or does not follow the schema.
    """
    path = Path(directory) / RESULTS_FILE
    results = read_json(path, "run `sst compare TASK` to create it")
    validate_results(results, path, check_method)
    return results


# --------------------------------------------------------------------------
# The headline metric
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """The metric a comparison is judged on: a summary key, its label and its direction."""

    key: str
    label: str
    higher_is_better: bool


# What each task's report measured before results files declared a headline; the labels
# are the words today's reports print. Graph reports per graph task (settings.task).
DEFAULT_HEADLINES = {
    "lm": Headline("val_ppl", "validation perplexity", False),
    "mt": Headline("test_bleu", "test BLEU", True),
    "images": Headline("test_accuracy", "test accuracy", True),
    "graph:nc": Headline("test_f1", "test F1", True),
    "graph:lp": Headline("test_roc", "test ROC-AUC", True),
}


def headline(results: Mapping[str, Any], task: str) -> Headline:
    """The headline ``results`` declares, else :data:`DEFAULT_HEADLINES` ``[task]``.

    Args:
        results: the results (only ``"headline"`` is read; validated by
            :func:`validate_results`).
        task: the :data:`DEFAULT_HEADLINES` key of the calling report.
    """
    declared = results.get("headline")
    if declared is None:
        return DEFAULT_HEADLINES[task]
    return Headline(declared["key"], declared["label"], declared["higher_is_better"])


def metric_name(label: str) -> str:
    """``label`` without its split word: "test BLEU" -> "BLEU" (for "the BLEU gap")."""
    for split in ("test ", "validation ", "val "):
        if label.startswith(split):
            return label[len(split):]
    return label


def metric_values(methods: Mapping[str, Any], key: str) -> dict[str, float | None]:
    """``{method: finite methods[method][key] or None}``."""
    return {name: finite((entry or {}).get(key)) for name, entry in methods.items()}


# --------------------------------------------------------------------------
# The share of the gap closed
# --------------------------------------------------------------------------


def best_baseline(values: Mapping[str, float | None],
                  higher_is_better: bool = False) -> tuple[str, float] | None:
    """The best finite value among the low-rank baselines present: ``(name, value)``.

    Args:
        values: method name -> metric (None or non-finite when missing or diverged).
        higher_is_better: True for accuracies/AUCs, False for perplexities.
    """
    present = [(value, name) for name in LOW_RANK_BASELINES
               if is_number(value := values.get(name)) and math.isfinite(value)]
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


@dataclass(frozen=True)
class Gap:
    """The figures behind "SST closes X% of the gap" (SPEC section 8).

    ``share`` is None when a figure is missing (see ``missing``) or when the best baseline is
    not worse than full rank (``missing`` empty).
    """

    share: float | None
    full: float | None
    sst: float | None
    best: tuple[str, float] | None  # (name, value) of the best low-rank baseline
    #: The share computed within each seed (every method's run of that seed), in seed
    #: order; empty unless every method has per-seed figures for two or more common seeds.
    seed_shares: tuple[float | None, ...] = ()

    @property
    def missing(self) -> list[str]:
        """Which of "full", "sst", "baseline" has no finite value, in that order."""
        return [role for role, value in (("full", self.full), ("sst", self.sst),
                                         ("baseline", self.best)) if value is None]


def gap(values: Mapping[str, float | None], higher_is_better: bool) -> Gap:
    """The share of the full-vs-low-rank gap SST closes on one metric.

    Args:
        values: method name -> metric value (None or non-finite: missing or diverged).
        higher_is_better: the metric's direction.
    """
    full, sst = finite(values.get("full")), finite(values.get("sst"))
    best = best_baseline(values, higher_is_better)
    if full is None or sst is None or best is None:
        return Gap(None, full, sst, best)
    return Gap(share_of_gap(full, sst, best[1], higher_is_better), full, sst, best)


def headline_gap(results: Mapping[str, Any], task: str) -> tuple[Headline, Gap]:
    """The headline metric of a comparison and the gap SST closes on it (per-method values).

    Args:
        results: reads ``headline`` and ``methods[*][headline key]`` (no methods: no gap).
        task: the :data:`DEFAULT_HEADLINES` key of the calling report.
    """
    metric = headline(results, task)
    methods = results.get("methods", {})
    values = metric_values(methods, metric.key)
    whole = gap(values, metric.higher_is_better)
    shares = tuple(gap(per_seed, metric.higher_is_better).share
                   for per_seed in _per_seed_values(methods, metric.key))
    return metric, Gap(whole.share, whole.full, whole.sst, whole.best, shares)


def _per_seed_values(methods: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """``[{method: value}]`` for each seed every method ran (``entry["seeds"]`` of
    ``sst compare --seeds``), in seed order; empty for fewer than two such seeds."""
    by_method = {}
    for name, entry in methods.items():
        seeds = entry.get("seeds") if isinstance(entry, Mapping) else None
        if not isinstance(seeds, list):
            return []
        if not all(isinstance(s, Mapping) and key in s for s in seeds):
            return []  # the metric is not one kept per seed
        by_method[name] = {s.get("seed"): s[key] for s in seeds}
    common = set.intersection(*(set(v) for v in by_method.values())) if by_method else set()
    if len(common) < 2:
        return []
    return [{name: by_method[name][seed] for name in by_method}
            for seed in sorted(common, key=repr)]


# --------------------------------------------------------------------------
# Method names
# --------------------------------------------------------------------------


def display(name: str) -> str:
    """The human name of a method ("relora" -> "ReLoRA*"); other names unchanged."""
    return DISPLAY.get(name, name)


def ordered_methods(methods: Mapping[str, Any]) -> list[str]:
    """Method names in the canonical order, then the others in file order."""
    known = [name for name in METHOD_ORDER if name in methods]
    return known + [name for name in methods if name not in METHOD_ORDER]


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` as a 120-dpi PNG, atomically."""
    # format given explicitly: the temporary file's suffix is not ".png".
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


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
        save_figure(plot(results), path)
        written[key] = path
    report = directory / report_file
    atomic_write_text(report, markdown(results))
    return {"report": report, **written}


def render_report(directory: str | os.PathLike, load: Callable[[str | os.PathLike], Any],
                  plotters: Mapping[str, Callable[[Any], Any]], plot_files: Mapping[str, str],
                  markdown: Callable[[Any], str], report_file: str = REPORT_FILE
                  ) -> dict[str, Path]:
    """Read a folder's result files, then write its plots and its report there.

    Every plot is written, even without data (it then shows a "no data" note), and the report
    last, each atomically (:func:`write_report_files`).

    Args:
        directory: the folder holding the result files; the report goes there too.
        load: reads and checks the folder's files (``load(directory)``).
        plotters: see :func:`write_report_files`.
        plot_files: see :func:`write_report_files`.
        markdown: see :func:`write_report_files`.
        report_file: the report's file name.

    Returns:
        ``{"report": path, **{key: plot path}}``.

    Raises:
        FileNotFoundError: a result file does not exist (from ``load``).
        ValueError: it is invalid; the message names the path and the key (from ``load``).
    """
    results = load(directory)
    return write_report_files(directory, results, plotters, plot_files, markdown, report_file)
