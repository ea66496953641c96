"""``torchrun --nproc_per_node 1`` against the plain command: the same run on one device?

Trains one short ``sst train lm`` job (SST, selections changing and re-SVDs inside the run)
three times on one device: twice as the plain command and once under
``torchrun --standalone --nproc_per_node 1`` (a process group of one: NCCL on CUDA, gloo on
the CPU, the model in DDP). The two plain runs give the device's own run-to-run spread
(CUDA kernels such as the embedding backward are not deterministic); the torchrun run should
sit within it. Prints and writes ``torchrun_one_device.json``: final validation losses,
the largest weight difference of the final checkpoints, the train-loss differences.

    PYTHONPATH=src python benchmarks/torchrun_one_device.py --device cuda --out DIR
    PYTHONPATH=src python benchmarks/torchrun_one_device.py --device cpu    # dry run

The corpus is this checkout's README (character tokenizer): no data set or download needed.
Multi-GPU runs cannot be measured with one device; they are not claimed here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _job_args(device: str, out: Path, steps: int) -> list[str]:
    return ["train", "lm", "--text", str(ROOT / "README.md"), "--model", "gpt_cpu",
            "--method", "sst", "--rank", "16", "--block_size", "128", "--batch_size", "8",
            "--num_training_steps", str(steps), "--warmup_steps", "5", "--eval_every",
            str(steps), "--eval_tokens", "4096", "--log_every", "1", "--save_every",
            str(steps), "--iteration_interval", "5", "--device", device, "--output_dir",
            str(out), "--no_progress"]


def _run(command: list[str], env: dict) -> float:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n"
                         f"{done.stderr[-4000:]}")
    return time.perf_counter() - began


def _final(run: Path) -> tuple[dict, dict, list[float]]:
    summary = json.loads((run / "summary.json").read_text())
    latest = (run / "checkpoints" / "latest").read_text().strip()
    weights = load_file(run / "checkpoints" / latest / "model.safetensors")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return summary, weights, [r["train_loss"] for r in lines if "train_loss" in r]


def _apart(a: Path, b: Path) -> dict:
    (sa, wa, la), (sb, wb, lb) = _final(a), _final(b)
    return {"val_loss": [sa["val_loss"], sb["val_loss"]],
            "max_weight_diff": max(float((wa[k].float() - wb[k].float()).abs().max())
                                   for k in wa),
            "max_train_loss_diff": max(abs(x - y) for x, y in zip(la, lb, strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (dry run)")
    parser.add_argument("--out", default="runs/torchrun_one_device",
                        help="folder for torchrun_one_device.json (the runs go to a "
                             "temporary folder)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu for a dry run")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as runs:
        result = _measure(args.device, args.steps, Path(runs))
    (Path(args.out) / "torchrun_one_device.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _measure(device: str, steps: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    cli = [sys.executable, "-m", "sparse_spectral.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "1", "-m", "sparse_spectral.cli"]
    seconds = {}
    for name, prefix in (("plain", cli), ("plain_again", cli), ("torchrun", torchrun)):
        seconds[name] = _run(prefix + _job_args(device, out / name, steps), env)
    summary = json.loads((out / "torchrun" / "summary.json").read_text())
    return {"device": summary.get("device"), "steps": steps,
            "world_size_recorded": summary.get("world_size"),
            "plain_vs_plain": _apart(out / "plain", out / "plain_again"),
            "torchrun_vs_plain": _apart(out / "torchrun", out / "plain"),
            "wall_s": seconds}


if __name__ == "__main__":
    main()
