"""Training-state bytes per rank under FSDP2 against DDP, LLaMA-350M shape, SST and full rank.

From the parameter shapes alone (models built on the meta device, as
:func:`~sparse_spectral.accounting.planned_state_bytes` counts them: weights, one gradient
and two AdamW moments per trainable tensor, no step counters): under DDP every rank holds it
all; under FSDP2 (``sparse_spectral.training.fsdp.shard_model``: each decoder block, then the
root) every parameter, gradient and moment is sharded on one dim (SST's ``Vh_*`` on dim 1,
the rest on dim 0; the largest shard, ``ceil(size / W)``, is counted), buffers (SST's
``idx``) stay whole. FSDP2 also gathers one unit's parameters (and, in backward, its
unsharded gradients) at a time: the ``transient`` column is the largest decoder block's
gathered weights + gradients, and ``root`` the root unit's (embeddings, final norm, head),
which stays gathered from forward to backward. Vocabulary 32,000, untied embeddings::

    python benchmarks/fsdp_memory.py --out benchmarks/results/fsdp_memory
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch import nn

from sparse_spectral.accounting import planned_state_bytes
from sparse_spectral.methods import make_method
from sparse_spectral.models.presets import build_lm
from sparse_spectral.spectral.layer import SpectralLinear

VOCAB = 32000
PRESET = "llama_350m"
METHODS = (("full", {}), ("sst", {"rank": 128}))
WORLD_SIZES = (1, 2, 4, 8)


def _shard_dims(model: nn.Module) -> dict[int, int]:
    """id(param) -> the dim FSDP2 shards it on under ``shard_model``."""
    dims = {id(p): 0 for p in model.parameters()}
    for layer in model.modules():
        if isinstance(layer, SpectralLinear):
            dims[id(layer.Vh_active)] = dims[id(layer.Vh_frozen)] = 1
    return dims


def _shard_bytes(p: torch.Tensor, dim: int, world: int) -> int:
    if p.dim() == 0:
        return p.element_size()
    return math.ceil(p.shape[dim] / world) * (p.numel() // p.shape[dim]) * p.element_size()


def _unit_bytes(module: nn.Module, skip: set[int] = frozenset()) -> int:
    """Gathered weights + unsharded gradients of one FSDP2 unit (parameters not in ``skip``)."""
    total = 0
    for p in module.parameters():
        if id(p) not in skip:
            total += p.numel() * p.element_size() * (2 if p.requires_grad else 1)
    return total


def per_rank(model: nn.Module, world: int) -> dict[str, int]:
    dims = _shard_dims(model)
    params = [p for _, p in model.named_parameters()]
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    weights = sum(_shard_bytes(p, dims[id(p)], world) for p in params) + buffers
    trainable = sum(_shard_bytes(p, dims[id(p)], world) for p in params if p.requires_grad)
    return {"weights": weights, "gradients": trainable, "optimizer_state": 2 * trainable,
            "total": weights + 3 * trainable}


def measure() -> list[dict]:
    rows = []
    for method, settings in METHODS:
        with torch.device("meta"):
            model = build_lm(PRESET, VOCAB, 1024)
        model = make_method(method, **settings).prepare(model)
        ddp = planned_state_bytes(model).to_dict()
        blocks = model.model.layers
        in_blocks = {id(p) for p in blocks.parameters()}
        transient = max(_unit_bytes(block) for block in blocks)
        root = _unit_bytes(model, skip=in_blocks)
        for world in WORLD_SIZES:
            fsdp = per_rank(model, world)
            rows.append({"method": method, "rank": settings.get("rank"), "world_size": world,
                         "ddp_total": ddp["total"], "fsdp2_weights": fsdp["weights"],
                         "fsdp2_gradients": fsdp["gradients"],
                         "fsdp2_optimizer_state": fsdp["optimizer_state"],
                         "fsdp2_total": fsdp["total"], "transient_block": transient,
                         "root_unit": root})
    return rows


def markdown(rows: list[dict]) -> str:
    mib = 2**20
    lines = [f"# Training-state MiB per rank, {PRESET}, FSDP2 vs DDP (fp32, AdamW)", "",
             "`planned_state_bytes` on the meta device; FSDP2 shards each tensor (largest "
             "shard counted), buffers whole. transient: the largest decoder block gathered "
             "(weights + gradients); root: embeddings + norm + head, gathered through "
             "forward and backward. `python benchmarks/fsdp_memory.py`.", "",
             "| method | W | DDP total | FSDP2 weights | FSDP2 grads | FSDP2 moments | "
             "FSDP2 total | FSDP2/DDP | + transient block | + root unit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["method"] + (f" r={r['rank']}" if r["rank"] else "")
        lines.append(
            f"| {name} | {r['world_size']} | {r['ddp_total'] / mib:.0f} | "
            f"{r['fsdp2_weights'] / mib:.0f} | {r['fsdp2_gradients'] / mib:.0f} | "
            f"{r['fsdp2_optimizer_state'] / mib:.0f} | {r['fsdp2_total'] / mib:.0f} | "
            f"{r['fsdp2_total'] / r['ddp_total']:.3f} | {r['transient_block'] / mib:.0f} | "
            f"{r['root_unit'] / mib:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the results")
    args = parser.parse_args()
    rows = measure()
    text = markdown(rows)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "memory.md").write_text(text)


if __name__ == "__main__":
    main()
