"""HyboNet epoch time with sparse products (CSR features and adjacency) against dense/COO.

    python benchmarks/graph_speed.py --data-dir ../shared/data --out benchmarks/results/graph_speed

For every data set, task and method, two models with the same seed and settings (HyboNet's
per-data-set ones, rank 2, HGCN's split) differ only in ``sparse_products``; they take turns
epoch by epoch (one training step, then the validation forward and metrics, as
``sparse_spectral.tasks.graph`` runs an epoch), so machine load hits both alike. Reported: the
median epoch time of each over ``--epochs`` timed epochs after ``--warmup``, their ratio, and
the largest difference of the training losses the two took (rounding only: the masks and
negatives are the same). One thread. Writes ``graph_speed.json`` and ``graph_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SETTINGS = (("cora", "nc"), ("cora", "lp"), ("citeseer", "nc"), ("citeseer", "lp"),
            ("airport", "nc"), ("airport", "lp"), ("disease", "nc"), ("disease", "lp"))
METHODS = ("full", "lora", "galore", "sst")


def _runner(settings, data, sparse: bool):
    """A closure running one epoch of one model; returns its training loss."""
    from sparse_spectral.hyperbolic import build_hyperbolic_optimizer
    from sparse_spectral.models.hybonet import train_graph_step
    from sparse_spectral.tasks.graph import GRAPH
    from sparse_spectral.training.runner import build_method

    s = settings.resolved()
    model = GRAPH.build_model(s, data)
    method = build_method(GRAPH, s, model)
    model = method.prepare(model)
    model.encoder.sparse_products = sparse
    optimizers = build_hyperbolic_optimizer(model, method, lr=s.optim.lr,
                                            weight_decay=s.optim.weight_decay)
    rng = copy.deepcopy(data.rng)
    torch_state = torch.random.get_rng_state()  # both models draw the same dropout masks
    step = 0
    clip = s.optim.grad_clip or None

    def epoch() -> float:
        nonlocal step, torch_state
        step += 1
        saved = torch.random.get_rng_state()
        torch.random.set_rng_state(torch_state)
        loss = train_graph_step(model, data, optimizers, method, step, clip, rng)
        torch_state = torch.random.get_rng_state()
        torch.random.set_rng_state(saved)
        model.eval()
        with torch.no_grad():
            model.metrics(model(data.features, data.adj_norm), data, "val")
        return loss

    return epoch


def measure(dataset: str, task: str, method: str, data, warmup: int, epochs: int) -> dict:
    from sparse_spectral.tasks.graph import GraphSettings

    settings = GraphSettings.from_dict(dict(dataset=dataset, task=task, split="hgcn",
                                            method=method, rank=2, seed=1234,
                                            save_embeddings=False))
    runs = {name: _runner(settings, data, sparse) for name, sparse in
            (("sparse", True), ("dense", False))}
    times: dict[str, list[float]] = {name: [] for name in runs}
    losses: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + epochs):
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        for name in order:
            tick = time.perf_counter()
            losses[name].append(runs[name]())
            if i >= warmup:
                times[name].append(time.perf_counter() - tick)
    sparse_ms, dense_ms = (1e3 * statistics.median(times[n]) for n in ("sparse", "dense"))
    return {"dataset": dataset, "task": task, "method": method, "sparse_ms": sparse_ms,
            "dense_ms": dense_ms, "speed_up": dense_ms / sparse_ms,
            "max_loss_difference": float(np.max(np.abs(np.subtract(losses["sparse"],
                                                                    losses["dense"]))))}


def markdown(rows: list[dict], args) -> str:
    lines = [(f"HyboNet epoch time (train step + validation), median of {args.epochs} epochs "
              f"after {args.warmup}, one thread, rank 2, HGCN split; torch "
              f"{torch.__version__}."), "",
             "| data | task | method | dense/COO (ms) | sparse (ms) | speed-up | max loss diff |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['task'].upper()} | {r['method']} | {r['dense_ms']:.1f} | "
              f"{r['sparse_ms']:.1f} | {r['speed_up']:.2f}x | {r['max_loss_difference']:.1e} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text
    from sparse_spectral.data.graphs import load_graph

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for dataset, task in SETTINGS:
        data = load_graph(dataset, task, data_dir=args.data_dir, split="hgcn", seed=1234)
        for method in args.methods.split(","):
            rows.append(measure(dataset, task, method, data, args.warmup, args.epochs))
            print(markdown(rows[-1:], args).splitlines()[-1], flush=True)
    out = Path(args.out)
    atomic_write_json(out / "graph_speed.json", {"warmup": args.warmup, "epochs": args.epochs,
                                                  "torch": torch.__version__, "rows": rows})
    atomic_write_text(out / "graph_speed.md", markdown(rows, args))
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
