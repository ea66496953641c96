"""Compiled vs eager training steps: compile time and step-time ratio per backend and method.

    nice python benchmarks/compile_ratio.py --threads 2 --out benchmarks/results/compile_cpu

For each method (full, sst) and backend (eager = not compiled, aot_eager, inductor) it builds
the same LLaMA preset, converts it, compiles it as ``sst train --compile`` does
(:func:`sparse_spectral.training.compile.compile_model`), times the first step (tracing and
compiling included) and then the median of ``--repeats`` steps, and counts compiled graphs
(one expected: SST swaps its selection every ``--interval`` steps without recompiling).
Prints a table and writes ``results.json`` and ``report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from sparse_spectral import make_method
from sparse_spectral.models.presets import build_lm
from sparse_spectral.training.compile import compile_model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method_name: str, backend: str, args) -> dict:
    """First-step seconds, median step seconds and compiled graphs of one configuration."""
    torch._dynamo.reset()
    device = torch.device(args.device)
    options = dict(rank=args.rank, iteration_interval=args.interval) \
        if method_name == "sst" else {}
    method = make_method(method_name, **options)
    model = method.prepare(build_lm(args.preset, vocab_size=args.vocab, block_size=args.block,
                                    seed=0)).to(device)
    counter = None
    if backend != "eager":
        counter = CompileCounterWithBackend(backend)
        compile_model(model, counter)
    optimizer = method.build_optimizer(model, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(1, args.repeats + 2):
        ids = torch.randint(0, args.vocab, (args.batch, args.block + 1), generator=gen)
        ids = ids.to(device)
        synchronize(device)
        began = time.perf_counter()
        logits = model(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab),
                                                 ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(step, optimizer)
        synchronize(device)
        times.append(time.perf_counter() - began)
    return {"method": method_name, "backend": backend, "first_step_s": times[0],
            "step_s": statistics.median(times[1:]),
            "graphs": counter.frame_count if counter else 0}


def markdown(rows: list[dict], header: dict) -> str:
    eager = {r["method"]: r["step_s"] for r in rows if r["backend"] == "eager"}
    lines = [f"# Compiled vs eager training steps ({header['device']})", "",
             f"`{header['command']}`", "",
             f"torch {header['torch']}, {header['threads']} threads, preset "
             f"{header['preset']}, batch {header['batch']} x {header['block']} tokens, "
             f"median of {header['repeats']} steps after the first.", "",
             "| method | backend | first step (s, compile included) | step (ms) | vs eager | "
             "graphs |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["step_s"] / eager[r["method"]]
        lines.append(f"| {r['method']} | {r['backend']} | {r['first_step_s']:.2f} | "
                     f"{1e3 * r['step_s']:.2f} | {ratio:.2f} | {r['graphs']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama_tiny")
    p.add_argument("--methods", default="full,sst")
    p.add_argument("--backends", default="eager,aot_eager,inductor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--interval", type=int, default=5, help="SST's T3 (swaps during timing)")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results/compile_cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for method_name in args.methods.split(","):
        for backend in args.backends.split(","):
            row = measure(method_name, backend, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    header = {"command": "python benchmarks/compile_ratio.py " + " ".join(argv or []),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": args.device if args.device != "cpu" else platform.processor() or "cpu",
              **{k: getattr(args, k) for k in ("preset", "batch", "block", "repeats")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    report = markdown(rows, header)
    (out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
