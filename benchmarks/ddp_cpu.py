"""CPU data parallelism: 2 torchrun processes against 1, the same global batch, one thread each.

Trains ``sst train lm`` (gpt_cpu, SST r=16) once in one process and once under
``torchrun --standalone --nproc_per_node 2``, with the same settings and global batch, and
reads each run's median step time from its ``summary.json``. Prints the throughput ratio
(1-process step time / 2-process step time; 2.0 would be perfect scaling) and the two
runs' final validation loss, and writes ``benchmarks/results/ddp_cpu/results.json``.

Run: ``PYTHONPATH=src nice python benchmarks/ddp_cpu.py [--steps 40]``. On a 2-core machine
the two ranks share the cores with anything else running: the figure is a rough one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def _run(prefix: list[str], out: Path, steps: int, batch: int) -> dict:
    args = prefix + ["-m", "sparse_spectral.cli", "train", "lm", "--text", str(TEXT),
                     "--model", "gpt_cpu", "--method", "sst", "--rank", "16",
                     "--block_size", "128", "--batch_size", str(batch),
                     "--num_training_steps", str(steps), "--warmup_steps", "2",
                     "--eval_every", "0", "--eval_tokens", "2048", "--iteration_interval", "5",
                     "--output_dir", str(out), "--overwrite", "--no_progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=16, help="global micro-batch rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = _run([sys.executable], Path(tmp) / "one", args.steps, args.batch_size)
        two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2"], Path(tmp) / "two", args.steps, args.batch_size)
    result = {
        "steps": args.steps, "global_batch_rows": args.batch_size, "block_size": 128,
        "model": "gpt_cpu", "method": "sst r=16",
        "step_time_s": {"1 process": one["step_time_s"], "2 processes": two["step_time_s"]},
        "throughput_ratio_2_over_1": one["step_time_s"] / two["step_time_s"],
        "val_loss": {"1 process": one["val_loss"], "2 processes": two["val_loss"]},
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "benchmarks" / "results" / "ddp_cpu"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
