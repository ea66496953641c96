"""SST/full step time in fp32 and in bf16-mixed, side by side in one run (issue 15's CPU figure).

    python benchmarks/precision_ratio.py --out benchmarks/results/precision_cpu

For each width, full rank and SST (r = width / 8) train the same 2-layer LLaMA shape on one
fixed batch; both precisions' models are built in this process and stepped in turns, so that
machine load hits every cell alike. Writes ``precision.json`` and ``precision.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import Runner, add_run_arguments, batch, step_times_in_turns  # noqa: E402

from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text  # noqa: E402

PRECISIONS = ("fp32", "bf16-mixed")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/precision_cpu")
    p.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    add_run_arguments(p, repeats=7, threads=1)
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    torch.set_num_threads(args.threads)

    rows = []
    for width in args.widths:
        ids = batch(args)
        runners = {}
        for precision in PRECISIONS:
            args.precision = precision
            for name in ("full", "sst"):
                runners[(precision, name)] = Runner(name, width, width // 8, args, ids)
        times = step_times_in_turns(runners, args.warmup, args.repeats)
        ms = {key: 1e3 * statistics.median(v) for key, v in times.items()}
        for precision in PRECISIONS:
            rows.append({"width": width, "precision": precision,
                         "full_ms": ms[(precision, "full")], "sst_ms": ms[(precision, "sst")],
                         "sst_over_full": ms[(precision, "sst")] / ms[(precision, "full")]})
        rows.append({"width": width, "bf16_over_fp32_full": ms[("bf16-mixed", "full")]
                     / ms[("fp32", "full")], "bf16_over_fp32_sst": ms[("bf16-mixed", "sst")]
                     / ms[("fp32", "sst")]})
        print(rows[-3:], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/precision_ratio.py " + " ".join(argv or sys.argv[1:])
    atomic_write_json(out / "precision.json", {"command": command, "threads": args.threads,
                                               "torch": torch.__version__, "rows": rows,
                                               "time": time.strftime("%Y-%m-%d %H:%M")})
    lines = [f"`{command}` ({args.threads} thread(s), torch {torch.__version__}, "
             f"{args.tokens} tokens per step, r = width / 8)", "",
             "| width | precision | full (ms) | SST (ms) | SST/full |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['width']} | {r['precision']} | {r['full_ms']:.1f} | {r['sst_ms']:.1f} | "
              f"{r['sst_over_full']:.3f} |" for r in rows if "precision" in r]
    lines += ["", "| width | bf16-mixed/fp32, full | bf16-mixed/fp32, SST |", "|---:|---:|---:|"]
    lines += [f"| {r['width']} | {r['bf16_over_fp32_full']:.3f} | {r['bf16_over_fp32_sst']:.3f} |"
              for r in rows if "bf16_over_fp32_full" in r]
    atomic_write_text(out / "precision.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
