"""What SST's rank collectives cost under DDP: bytes broadcast per step and their time share.

    PYTHONPATH=src nice python benchmarks/ddp_broadcast_cost.py --steps 60

Two spawned gloo ranks (one thread each, a ``file://`` store) train the ``gpt_cpu`` preset
with SST (r = 16, T3 = 5, staggered re-SVDs) under ``DistributedDataParallel``, calling
``method.after_step`` inside :func:`~sparse_spectral.training.distributed.replicated_ranks`
as the engine does. Every broadcast the method makes (the owner's re-SVD factors, rank 0's
drawn indices) is counted and timed (rank 0's view); the DDP gradient all-reduce is not in
these figures. Writes ``benchmarks/results/ddp_broadcast/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _worker(rank: int, world: int, store: str, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    import sparse_spectral._util.collectives as collectives
    import sparse_spectral.methods.sst as sst_module
    from sparse_spectral.methods import make_method
    from sparse_spectral.models.presets import build_lm
    from sparse_spectral.training.distributed import replicated_ranks

    sent = {"bytes": 0, "seconds": 0.0, "calls": 0}
    original = collectives.broadcast_

    def counted(tensors, src):
        start = time.perf_counter()
        original(tensors, src)
        sent["seconds"] += time.perf_counter() - start
        sent["bytes"] += sum(t.numel() * t.element_size() for t in tensors)
        sent["calls"] += 1

    collectives.broadcast_ = counted  # broadcast_indices calls it through the module
    sst_module.broadcast_ = counted

    model = build_lm("gpt_cpu", 256, 64, seed=0)
    method = make_method("sst", rank=16, iteration_interval=5)
    model = method.prepare(model)
    optimizer = method.build_optimizer(model, lr=1e-3)
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    g = torch.Generator().manual_seed(rank)
    step_seconds = []
    with replicated_ranks():
        for step in range(1, steps + 1):
            ids = torch.randint(0, 256, (8, 64), generator=g)
            start = time.perf_counter()
            ddp(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step(step, optimizer)
            step_seconds.append(time.perf_counter() - start)
    if rank == 0:
        total = sum(step_seconds)
        layers = [layer for _, layer in method.layers]
        result = {"steps": steps, "world_size": world, "model": "gpt_cpu", "rank": 16,
                  "iteration_interval": 5, "sst_layers": len(layers),
                  "broadcast_calls": sent["calls"], "broadcast_bytes": sent["bytes"],
                  "bytes_per_step": sent["bytes"] / steps,
                  "broadcast_seconds": sent["seconds"], "train_seconds": total,
                  "time_share": sent["seconds"] / total,
                  "trainable_gradient_bytes_per_step": sum(
                      p.numel() * p.element_size() for p in model.parameters()
                      if p.requires_grad)}
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    out_dir = ROOT / "benchmarks" / "results" / "ddp_broadcast"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(2, os.path.join(tmp, "store"), args.steps, out), nprocs=2)
        result = json.loads(Path(out).read_text())
    result["command"] = ("PYTHONPATH=src python benchmarks/ddp_broadcast_cost.py "
                         f"--steps {args.steps}")
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
