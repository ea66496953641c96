"""Every method at LLaMA-130M and 350M shapes on one GPU, bf16-mixed: tokens/s and peak memory.

    python benchmarks/perf_gpu.py --device cuda --out benchmarks/results/perf_gpu
    python benchmarks/perf_gpu.py --device cpu --dry_run --out runs/perf_gpu_dry_run

Per preset (``llama_130m`` at r = 64 and ``llama_350m`` at r = 128 by default, vocabulary
32,000, sequences of 1,024 tokens, ``--tokens`` per optimizer step in ``--micro_batches``
accumulated micro-batches):

* peak memory: each method alone (the others freed), from building and converting the model
  on the device through ``--peak_steps`` steps; on CUDA ``torch.cuda.max_memory_allocated``;
  on the CPU (a dry run) the tensor bytes of weights, gradients and optimizer state only;
* step time: forward + backward + optimizer step + ``after_step``, the methods stepping in
  turns (the order rotating each round) so that clock and load changes hit them alike; the
  median of ``--repeats`` steps after ``--warmup``; tokens/s = tokens per step / median.

``--dry_run`` keeps the presets' widths but builds 2 blocks, a vocabulary of 2,048 and steps
512 tokens, so the whole path runs on a CPU in minutes (its figures mean nothing).
Writes ``perf_gpu.json`` and ``perf_gpu.md`` into ``--out`` after every preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf import METHODS, Runner, step_times_in_turns, synchronize  # noqa: E402

from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from sparse_spectral.models.presets import get_preset  # noqa: E402

GIB = 2**30
DEFAULT_RANKS = {"llama_130m": 64, "llama_350m": 128}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/perf_gpu")
    p.add_argument("--device", default="cuda")
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_RANKS))
    p.add_argument("--ranks", type=int, nargs="+",
                   help="one rank per preset (default: 64 for llama_130m, 128 for llama_350m)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tokens", type=int, default=65536, help="tokens per optimizer step")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro_batches", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--precision", default="bf16-mixed", choices=("fp32", "bf16-mixed"))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--peak_steps", type=int, default=3)
    p.add_argument("--dry_run", action="store_true",
                   help="2 blocks per preset, vocabulary 2048, 512 tokens per step, 1 + 2 steps")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is visible to torch; "
                "use --device cpu --dry_run to check the script without one")
    unknown = [name for name in args.presets if name not in DEFAULT_RANKS and _missing(name)]
    if unknown:
        p.error(f"--presets: unknown preset(s) {unknown}")
    if args.ranks is None:
        args.ranks = [DEFAULT_RANKS.get(name, 64) for name in args.presets]
    if len(args.ranks) != len(args.presets):
        p.error(f"--ranks takes one rank per preset ({len(args.presets)}), got {args.ranks}")
    if args.dry_run:
        # A small vocabulary: CPUs without native bf16 run some bf16 products of a
        # 32,000-wide head at about 1 GFLOP/s (measured here), which is not what is checked.
        args.tokens, args.seq, args.micro_batches, args.vocab = 512, 128, 2, 2048
        args.warmup, args.repeats, args.peak_steps = 1, 2, 1
    sequences = args.tokens // args.seq
    if args.tokens % args.seq or sequences % args.micro_batches:
        p.error(f"--tokens={args.tokens} must be --seq={args.seq} times a multiple of "
                f"--micro_batches={args.micro_batches}")
    return args


def _missing(name: str) -> bool:
    try:
        get_preset(name)
    except ValueError:
        return True
    return False


def shape_of(name: str, dry_run: bool):
    spec = get_preset(name)
    return dataclasses.replace(spec, num_layers=2) if dry_run else spec


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(name: str, spec, rank: int, args, ids: torch.Tensor) -> dict:
    """One method alone: bytes at its peak, from building the model through a few steps."""
    free(args.device)
    runner = Runner(name, spec, rank, args, ids)
    for _ in range(args.peak_steps):
        runner.step()
    report = runner.memory
    out = {"state_bytes": report.weights + report.gradients + report.optimizer_state}
    if args.device.type == "cuda":
        out["peak_allocated"] = torch.cuda.max_memory_allocated(args.device)
        out["peak_reserved"] = torch.cuda.max_memory_reserved(args.device)
    del runner
    free(args.device)
    return out


def measure_preset(name: str, rank: int, args) -> dict:
    spec = shape_of(name, args.dry_run)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.tokens // args.seq, args.seq),
                        generator=g).to(args.device)
    row = {"preset": name, "rank": rank, "layers": spec.num_layers, "methods": {}}
    for method in args.methods:
        print(f"{name}: peak memory of {method} ...", flush=True)
        row["methods"][method] = peak_memory(method, spec, rank, args, ids)
    print(f"{name}: step time, methods in turns ...", flush=True)
    runners = {method: Runner(method, spec, rank, args, ids) for method in args.methods}
    times = step_times_in_turns(runners, args.warmup, args.repeats)
    for method, samples in times.items():
        entry = row["methods"][method]
        entry["step_ms"] = 1e3 * statistics.median(samples)
        entry["step_ms_all"] = [1e3 * t for t in samples]
        entry["tokens_per_s"] = args.tokens / statistics.median(samples)
    del runners
    free(args.device)
    row["ratios"] = ratios(row["methods"])
    return row


def ratios(methods: dict) -> dict:
    """SST against full rank (step time, memory) and against GaLore (memory)."""
    out = {}
    sst, full, galore = methods.get("sst"), methods.get("full"), methods.get("galore")
    key = "peak_allocated" if sst and "peak_allocated" in sst else "state_bytes"
    if sst and full:
        out["sst_over_full_step_time"] = sst["step_ms"] / full["step_ms"]
        out["sst_over_full_memory"] = sst[key] / full[key]
    if sst and galore:
        out["sst_over_galore_memory"] = sst[key] / galore[key]
    out["memory_measure"] = key
    return out


def _gib(count: int | None) -> str:
    return "-" if count is None else f"{count / GIB:.2f}"


def markdown(results: dict) -> str:
    a = results["settings"]
    lines = [f"# Every method on {results['machine']}", "",
             f"Command: `{results['command']}`", "",
             *(["**Dry run**: 2 blocks per preset and a few hundred tokens per step; the "
                "figures only show that the script runs.", ""] if a["dry_run"] else []),
             f"{a['precision']}, {a['tokens']} tokens per optimizer step ({a['micro_batches']} "
             f"micro-batches of {a['tokens'] // a['seq'] // a['micro_batches']} x {a['seq']}), "
             f"vocabulary {a['vocab']}, median of {a['repeats']} steps after {a['warmup']}, "
             "methods stepping in turns.", "",
             "| preset | rank | method | step (ms) | / full | tokens/s | peak memory (GiB) "
             "| / full | weights + grads + opt (GiB) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["presets"]:
        m, measure = row["methods"], row["ratios"]["memory_measure"]
        full = m.get("full")
        for name, e in m.items():
            lines.append(
                f"| {row['preset']} | {row['rank']} | {name} | {e['step_ms']:.1f} | "
                f"{e['step_ms'] / full['step_ms']:.3f} | {e['tokens_per_s']:,.0f} | "
                f"{_gib(e.get('peak_allocated'))} | "
                f"{e[measure] / full[measure]:.3f} | {e['state_bytes'] / GIB:.2f} |"
                if full else f"| {row['preset']} | {row['rank']} | {name} | "
                f"{e['step_ms']:.1f} | | {e['tokens_per_s']:,.0f} | | | |")
    lines += ["", "| preset | SST / full step time | SST / full memory | SST / GaLore memory "
              "| memory measure |", "|---|---:|---:|---:|---|"]
    for row in results["presets"]:
        r = row["ratios"]
        cells = [f"{r[k]:.3f}" if k in r else "" for k in
                 ("sst_over_full_step_time", "sst_over_full_memory", "sst_over_galore_memory")]
        lines.append(f"| {row['preset']} | {' | '.join(cells)} | {r['memory_measure']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = (torch.cuda.get_device_name(args.device) if args.device.type == "cuda"
               else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    results = {"command": "python " + " ".join(["benchmarks/perf_gpu.py",
                                                *(argv or sys.argv[1:])]),
               "machine": f"{machine}, torch {torch.__version__}",
               "time": time.strftime("%Y-%m-%d %H:%M"),
               "settings": {k: str(v) if isinstance(v, torch.device) else v
                            for k, v in vars(args).items()},
               "presets": []}
    for name, rank in zip(args.presets, args.ranks):
        start = time.perf_counter()
        results["presets"].append(measure_preset(name, rank, args))
        results["presets"][-1]["wall_s"] = time.perf_counter() - start
        atomic_write_json(out / "perf_gpu.json", results)
        atomic_write_text(out / "perf_gpu.md", markdown(results))
    synchronize(args.device)
    print((out / "perf_gpu.md").read_text())


if __name__ == "__main__":
    main()
