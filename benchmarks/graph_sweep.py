"""HyboNet graph benchmark: data sets x tasks x methods x ranks x seeds, resumable.

Every cell is one ``training.runner.train_run`` of the graph task with HyboNet's per-data-set
settings (dimension 16, early stopping on validation, test at the best validation epoch), run
in a worker process with one thread. A finished cell leaves its run folder under ``<out>/runs/
<data>-<task>/<method>[-r<rank>]/seed<seed>/`` and a compact record (its summary without the
per-epoch curve) under ``<results>/cells/`` (default ``benchmarks/results/graph_hybonet``, in
git; a run folder without one gets it at the next start). A recorded cell is skipped on the
next start, so the sweep can be stopped and resumed on another machine from a clone. After
every cell ``<results>/sweep.json`` and ``<results>/sweep.md`` are rewritten from all
records: the faithfulness table (full rank against the official code's numbers,
reference/hybonet.md section 2.10) and the method table with the share of the gap SST
closes.

    # faithfulness check: full rank, HGCN's split, 3 seeds, the five reference settings
    python benchmarks/graph_sweep.py --out runs/graph_sweep --stage faithful
    # the priority grid: Cora NC, Disease LP, Airport LP at r = 2, every method
    python benchmarks/graph_sweep.py --out runs/graph_sweep --stage r2-priority
    python benchmarks/graph_sweep.py --out runs/graph_sweep --stage r2-rest
    python benchmarks/graph_sweep.py --out runs/graph_sweep --stage ranks
    python benchmarks/graph_sweep.py --out runs/graph_sweep --report-only

Full rank has no rank: its cells are shared by every rank's row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

# The worker processes (spawn) import this module too: make the package importable there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RESULTS = Path(__file__).resolve().parent / "results" / "graph_hybonet"
SEEDS = (1234, 1235, 1236)
LOW_RANK = ("lora", "relora", "galore", "sst")
METHODS = ("full",) + LOW_RANK
# The official code's single-seed test numbers on this machine (reference/hybonet.md 2.10).
OFFICIAL = {("cora", "nc"): ("acc", 0.811), ("cora", "lp"): ("roc", 0.944),
            ("disease", "lp"): ("roc", 0.967), ("airport", "lp"): ("roc", 0.964),
            ("airport", "nc"): ("f1", 0.945)}
# Fastest first, so that a time-boxed sweep finishes whole rows.
PRIORITY = (("disease", "lp"), ("airport", "lp"), ("cora", "nc"))
REST = (("airport", "nc"), ("cora", "lp"), ("disease", "nc"), ("citeseer", "nc"),
        ("citeseer", "lp"))
# NC: F1 (micro F1 = accuracy for more than two classes); LP: ROC-AUC, then AP.
GAP_METRICS = {"nc": ("f1",), "lp": ("roc", "ap")}


def stage_cells(stage: str, seeds=SEEDS) -> list[tuple[str, str, str, int, int]]:
    """``(dataset, task, method, rank, seed)`` cells of a stage, in run order.

    Full rank's cells carry rank 0 whatever the stage: one run serves every rank's row.
    """
    return [(d, t, m, 0 if m == "full" else r, s) for d, t, m, r, s in _cells(stage, seeds)]


def _cells(stage: str, seeds) -> list[tuple[str, str, str, int, int]]:
    faithful = [("disease", "lp"), ("airport", "lp"), ("cora", "nc"), ("airport", "nc"),
                ("cora", "lp")]
    if stage == "faithful":
        return [(d, t, "full", 0, s) for d, t in faithful for s in seeds]
    if stage == "r2-priority":  # seed-major: a time-boxed sweep has every method at 1 seed
        return [(d, t, m, 2, s) for d, t in PRIORITY for s in seeds for m in METHODS]
    if stage == "r2-rest":
        return [(d, t, m, 2, s) for d, t in REST for m in METHODS for s in seeds]
    if stage == "ranks":
        return [(d, t, m, r, s) for r in (1, 4) for d, t in PRIORITY + REST
                for m in METHODS for s in seeds]
    raise ValueError(f"stage={stage!r} is unknown; allowed: faithful, r2-priority, r2-rest, "
                     "ranks")


def _cell_parts(dataset: str, task: str, method: str, rank: int, seed: int) -> tuple[str, ...]:
    return (f"{dataset}-{task}", method if method == "full" else f"{method}-r{rank}",
            f"seed{seed}")


def cell_dir(out: Path, *cell) -> Path:
    """The run folder of ``cell = (dataset, task, method, rank, seed)``."""
    return out.joinpath("runs", *_cell_parts(*cell))


def record_path(results: Path, *cell) -> Path:
    """The compact record of ``cell`` (kept in git)."""
    *folders, seed = _cell_parts(*cell)
    return results.joinpath("cells", *folders, f"{seed}.json")


def write_record(results: Path, cell: tuple, summary: dict) -> None:
    """Keep ``summary`` without its per-epoch curve (the run folder has it)."""
    from sparse_spectral._util.atomic import atomic_write_json

    atomic_write_json(record_path(results, *cell),
                      {k: v for k, v in summary.items() if k != "curve"})


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_cell(out: str, split: str, data_dir: str | None, cell: tuple,
             lr: float | None = None) -> dict:
    """Train one cell in this (worker) process; return its summary. ``lr`` None: HyboNet's
    learning rate for the data set and task."""
    from sparse_spectral.tasks.graph import GRAPH, GraphSettings
    from sparse_spectral.training.runner import train_run

    dataset, task, method, rank, seed = cell
    settings = GraphSettings.from_dict(dict(
        dataset=dataset, task=task, data_dir=data_dir, split=split, method=method,
        rank=max(rank, 1), seed=seed, lr=lr, output_dir=str(cell_dir(Path(out), *cell)),
        overwrite=True, save_embeddings=False))  # an unrecorded cell starts again
    return train_run(GRAPH, settings, progress=False).summary


# ---------------------------------------------------------------------- aggregation
def _summaries(results: Path) -> dict[tuple, dict]:
    found = {}
    for path in sorted((results / "cells").glob("*/*/seed*.json")):
        found[_cell_of((*path.parts[-3:-1], path.stem))] = json.loads(path.read_text())
    return found


def _cell_of(parts) -> tuple:
    """``("cora-nc", "sst-r2", "seed1234")`` -> ``("cora", "nc", "sst", 2, 1234)``."""
    data_task, method_rank, seed = parts
    dataset, task = data_task.rsplit("-", 1)
    method, _, rank = method_rank.partition("-r")
    return dataset, task, method, int(rank or 0), int(seed.removeprefix("seed"))


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def aggregate(results: Path) -> dict:
    """Mean/std per (dataset, task, method, rank) over the recorded seeds."""
    groups: dict[tuple, list[dict]] = {}
    for (d, t, m, r, s), summary in _summaries(results).items():
        groups.setdefault((d, t, m, r), []).append({"seed": s, **summary})
    table = {}
    for (d, t, m, r), runs in sorted(groups.items()):
        keys = ("acc", "f1") if t == "nc" else ("roc", "ap")
        table[f"{d}/{t}/{m}/r{r}"] = {
            "dataset": d, "task": t, "method": m, "rank": r,
            "seeds": sorted(x["seed"] for x in runs),
            **{f"test_{k}": _stat([x["test"][k] for x in runs]) for k in keys},
            **{f"val_{k}": _stat([x["val"][k] for x in runs]) for k in keys},
            "best_epoch": _stat([x["best_epoch"] for x in runs]),
            "epochs_run": _stat([x["epochs_run"] for x in runs]),
            "wall_time_s": _stat([x["wall_time_s"] for x in runs]),
            "trainable_params": runs[0]["trainable_params"],
            "total_params": runs[0]["total_params"],
        }
    return table


def _pm(stat: dict | None) -> str:
    if not stat:
        return "-"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f} (n={stat['n']})"


def faithfulness_markdown(table: dict) -> str:
    lines = [("| setting | metric | official (1 seed) | ours full rank (mean ± std) | "
              "difference (points) | within 2 points |"), "|---|---|---:|---:|---:|---|"]
    for (d, t), (metric, official) in OFFICIAL.items():
        row = table.get(f"{d}/{t}/full/r0")
        if row is None:
            lines.append(f"| {d} {t.upper()} | {metric} | {100 * official:.1f} | not run | - | - |")
            continue
        mean = row[f"test_{metric}"]["mean"]
        diff = 100 * (mean - official)
        lines.append(f"| {d} {t.upper()} | {metric} | {100 * official:.1f} | "
                     f"{_pm(row[f'test_{metric}'])} | {diff:+.1f} | "
                     f"{'yes' if abs(diff) <= 2 else 'NO'} |")
    return "\n".join(lines)


#: Baseline sets the share of the gap is measured against: every low-rank baseline we run,
#: and the paper's main comparison set (GaLore is only in its appendix, SPEC section 5).
BASELINE_SETS = {"all": ("lora", "relora", "galore"), "paper": ("lora", "relora")}
PAPER_SHARE = {"nc": 0.737, "lp": 0.825}


def methods_markdown(table: dict) -> str:
    """The method table (one line per data set, task, rank and metric) and the mean and
    median share of the gap SST closes per task and rank, over complete rows only."""
    from sparse_spectral.report import best_baseline, share_of_gap

    rows = sorted({(v["dataset"], v["task"], v["rank"]) for v in table.values()
                   if v["method"] != "full"})
    lines = [("| data | task | r | metric | full | LoRA | ReLoRA* | GaLore | SST | gap closed vs "
              "LoRA/ReLoRA*/GaLore | gap closed vs LoRA/ReLoRA* | SST vs best other low-rank |"),
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    shares: dict[tuple[str, str, int | str], list[float]] = {}
    for (d, t, r), metric in [(row, m) for row in rows for m in GAP_METRICS[row[1]]]:
        cells = {m: table.get(f"{d}/{t}/{m}/r{0 if m == 'full' else r}") for m in METHODS}
        means = {m: c[f"test_{metric}"]["mean"] for m, c in cells.items() if c}
        complete = all(cells[m] and cells[m]["test_" + metric]["n"] == len(SEEDS)
                       for m in METHODS)
        share_texts, verdict = [], "incomplete"
        for set_name, baselines in BASELINE_SETS.items():
            best = best_baseline({m: means.get(m) for m in baselines}, higher_is_better=True)
            if best is None or "sst" not in means or "full" not in means:
                share_texts.append("-")
                continue
            share = share_of_gap(means["full"], means["sst"], best[1], higher_is_better=True)
            share_texts.append("no gap" if share is None else f"{100 * share:.1f}%")
            if share is not None and complete and metric == GAP_METRICS[t][0]:
                for key in ((set_name, t, r), (set_name, t, "all")):
                    shares.setdefault(key, []).append(share)
            if set_name == "all":
                verdict = (f"{'better' if means['sst'] > best[1] else 'not better'} than "
                           f"{best[0]} ({100 * best[1]:.1f})")
                if not complete:
                    verdict += " (incomplete)"
        lines.append(f"| {d} | {t.upper()} | {r} | test {metric} | "
                     + " | ".join(_pm(cells[m][f'test_{metric}']) if cells[m] else "-"
                                  for m in METHODS)
                     + f" | {' | '.join(share_texts)} | {verdict} |")
    lines += ["", ("Share of the gap closed by SST over the complete rows with a gap (every "
                   "method, every seed; test F1 for NC, ROC-AUC for LP), mean and median:"), "",
              ("| task | r | vs LoRA/ReLoRA*/GaLore: mean | median | rows | vs LoRA/ReLoRA*: "
               "mean | median | rows | paper |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t, r in sorted({(t, r) for _, t, r in shares}, key=lambda k: (k[0], str(k[1]))):
        cols = []
        for set_name in BASELINE_SETS:
            values = shares.get((set_name, t, r), [])
            cols += ([f"{100 * statistics.fmean(values):.1f}%",
                      f"{100 * statistics.median(values):.1f}%"] if values else ["-", "-"])
            cols.append(str(len(values)))
        lines.append(f"| {t.upper()} | {r} | {' | '.join(cols)} | "
                     f"{100 * PAPER_SHARE[t]:.1f}% |")
    return "\n".join(lines)


def write_report(results: Path, split: str, lr: float | None = None) -> None:
    from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text

    table = aggregate(results)
    atomic_write_json(results / "sweep.json", {"split": split, "lr": lr, "cells": table})
    lr_text = "HyboNet's per data set" if lr is None else f"{lr:g} for every cell"
    text = (f"# HyboNet graph sweep (split {split}, learning rate {lr_text})\n\n"
            f"## Faithfulness (full rank vs the official code)\n\n{faithfulness_markdown(table)}"
            f"\n\n## Methods (test, %, mean ± std over seeds)\n\n{methods_markdown(table)}\n")
    atomic_write_text(results / "sweep.md", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder of the run folders")
    parser.add_argument("--results", default=str(RESULTS),
                        help="folder of the per-cell records and the tables (default: %(default)s)")
    parser.add_argument("--stage", action="append", default=[],
                        help="faithful, r2-priority, r2-rest or ranks (repeatable, in order)")
    parser.add_argument("--ranks", default=None,
                        help="comma-separated ranks to keep, e.g. 2,4 (full rank always kept)")
    parser.add_argument("--lr", type=float, default=None,
                        help="one learning rate for every cell (default: HyboNet's per data "
                        "set); give it its own --out and --results")
    parser.add_argument("--split", default="hgcn", help="hgcn (default, as the paper) or "
                        "corrected")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--only", default=None,
                        help="comma-separated data-task pairs to keep, e.g. airport-nc")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods to keep, e.g. lora,relora,galore,sst")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    # run folders of an earlier start that have no record yet (a sweep from before records)
    for path in sorted((out / "runs").glob("*/*/seed*/summary.json")):
        cell = _cell_of(path.parts[-4:-1])
        if not record_path(results, *cell).exists():
            write_record(results, cell, json.loads(path.read_text()))
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        cells = list(dict.fromkeys(c for stage in args.stage for c in stage_cells(stage, seeds)))
        if args.only:
            keep = set(args.only.split(","))
            cells = [c for c in cells if f"{c[0]}-{c[1]}" in keep]
        if args.methods:
            keep_methods = set(args.methods.split(","))
            cells = [c for c in cells if c[2] in keep_methods]
        if args.ranks:
            keep_ranks = {0, *(int(r) for r in args.ranks.split(","))}
            cells = [c for c in cells if c[3] in keep_ranks]
        # every finished run folder has a record by now (imported above)
        todo = [c for c in cells if not record_path(results, *c).exists()]
        print(f"{len(todo)} cell(s) to run, {len(cells) - len(todo)} already done", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as pool:
            futures = [(c, pool.submit(run_cell, str(out), args.split, args.data_dir, c,
                                              args.lr))
                       for c in todo]
            for cell, future in futures:
                try:
                    summary = future.result()
                    write_record(results, cell, summary)
                    print(f"{cell}: test {summary['test']} at epoch {summary['best_epoch']} "
                          f"of {summary['epochs_run']}, {summary['wall_time_s']:.0f}s",
                          flush=True)
                except Exception as err:  # record and go on with the other cells
                    print(f"{cell}: FAILED {type(err).__name__}: {err}", flush=True)
                write_report(results, args.split, args.lr)
    write_report(results, args.split, args.lr)
    print((results / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
