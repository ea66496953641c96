"""Training-state bytes of SST with its frozen factors in bf16 (``frozen_dtype="bfloat16"``).

Counts, with :func:`~sparse_spectral.accounting.planned_state_bytes` on models built on the
meta device (no memory allocated), the bytes of weights + gradients + AdamW moments of real
LLaMA shapes for full rank, SST as published (every tensor fp32) and SST with bf16 frozen
factors (``s``, the active vectors, their gradients and moments stay fp32). The 1B and 130M
rows use the paper's ranks (r = 128 and 64); LLaMA-7B is not in the paper (its r = 128 and
512 rows are for scale; 7B is LLaMA-1's shape, d 4096, ffn 11008, 32 layers). Vocabulary
32,000, untied embeddings, as ``benchmarks/perf.py``'s rows::

    python benchmarks/frozen_bf16.py --out benchmarks/results/frozen_bf16

``--speed`` times forward + backward of one square SST layer with fp32 against bf16 frozen
factors (the cost of casting them on use), in fp32 and under bf16 autocast, both
evaluations, the two layers stepped in turns. ``--collect RUNS`` instead tabulates the
validation losses of the runs that ``benchmarks/frozen_bf16_lm.sh`` trains (SST fp32 vs bf16
frozen factors, same seeds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sparse_spectral.accounting import planned_state_bytes
from sparse_spectral.methods import make_method
from sparse_spectral.models.presets import ModelPreset, build_lm, get_preset

VOCAB = 32000
LLAMA_7B = ModelPreset("llama_7b", "llama", 4096, 32, 32, 11008,
                       description="LLaMA-1 7B shape (not a preset; not in the SST paper)")
ROWS = (("llama_130m", 64), ("llama_1b", 128), ("llama_7b", 128), ("llama_7b", 512))
VARIANTS = {"full": ("full", {}), "sst": ("sst", {}),
            "sst_bf16_frozen": ("sst", {"frozen_dtype": "bfloat16"})}


def _preset(name: str) -> ModelPreset:
    return LLAMA_7B if name == "llama_7b" else get_preset(name)


def state_bytes(preset: ModelPreset, method: str, rank: int, options: dict) -> dict[str, int]:
    """``planned_state_bytes`` of ``preset`` prepared by ``method`` on the meta device."""
    with torch.device("meta"):
        model = build_lm(preset, VOCAB, 1024)
    settings = {} if method == "full" else {"rank": rank, **options}
    model = make_method(method, **settings).prepare(model)
    return planned_state_bytes(model).to_dict()


def measure() -> list[dict]:
    rows = []
    for name, rank in ROWS:
        preset = _preset(name)
        entry = {"model": name, "rank": rank, "d": preset.hidden_size, "ffn": preset.ffn_size,
                 "layers": preset.num_layers, "vocab": VOCAB}
        for key, (method, options) in VARIANTS.items():
            entry[key] = state_bytes(preset, method, rank, options)
        full = entry["full"]["total"]
        entry["sst_ratio"] = entry["sst"]["total"] / full
        entry["sst_bf16_frozen_ratio"] = entry["sst_bf16_frozen"]["total"] / full
        rows.append(entry)
        print(f"{name} r={rank}: SST/full {entry['sst_ratio']:.4f}, with bf16 frozen "
              f"{entry['sst_bf16_frozen_ratio']:.4f}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    gib = 2.0**30
    lines = ["# Training-state bytes with bf16 frozen factors", "",
             "Command: `python benchmarks/frozen_bf16.py --out benchmarks/results/frozen_bf16`",
             "", "Weights + gradients + AdamW moments (`planned_state_bytes`, meta device), "
             "vocabulary 32000, untied embeddings.", "",
             "| shape | r | full (GiB) | SST (GiB) | SST bf16-frozen (GiB) | SST / full | "
             "SST bf16-frozen / full | weights: SST / bf16-frozen (GiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in rows:
        lines.append(
            f"| {e['model']} (d {e['d']}, ffn {e['ffn']}, {e['layers']} layers) | {e['rank']} "
            f"| {e['full']['total'] / gib:.2f} | {e['sst']['total'] / gib:.2f} "
            f"| {e['sst_bf16_frozen']['total'] / gib:.2f} | {e['sst_ratio']:.4f} "
            f"| **{e['sst_bf16_frozen_ratio']:.4f}** | {e['sst']['weights'] / gib:.2f} / "
            f"{e['sst_bf16_frozen']['weights'] / gib:.2f} |")
    return "\n".join(lines) + "\n"


def _time_pass(layer, x: torch.Tensor, autocast: bool) -> float:
    began = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.float().square().mean().backward()
    layer.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def speed(width: int = 1024, tokens: int = 4096, repeats: int = 7) -> tuple[list[dict], str]:
    """Median forward + backward time of a ``width x width`` layer at ``r = width / 8``."""
    from torch import nn

    from sparse_spectral.spectral import SpectralLinear

    torch.manual_seed(0)
    dense, x = nn.Linear(width, width), torch.randn(tokens, width)
    rows = []
    for mode in ("factored", "composed"):
        layers = {key: SpectralLinear.from_linear(dense, width // 8, forward_mode=mode,
                                                  frozen_dtype=dtype)
                  for key, dtype in (("fp32", None), ("bf16", torch.bfloat16))}
        for autocast in (False, True):
            times = {key: [] for key in layers}
            for i in range(repeats + 2):  # 2 warm-up passes, then in turns
                for key, layer in layers.items():
                    elapsed = _time_pass(layer, x, autocast)
                    if i >= 2:
                        times[key].append(elapsed)
            med = {key: statistics.median(v) for key, v in times.items()}
            rows.append({"mode": mode, "precision": "bf16-mixed" if autocast else "fp32",
                         "fp32_frozen_s": med["fp32"], "bf16_frozen_s": med["bf16"],
                         "ratio": med["bf16"] / med["fp32"]})
            print(rows[-1], flush=True)
    lines = ["# Cost of casting bf16 frozen factors on use", "",
             f"Command: `python benchmarks/frozen_bf16.py --speed` ({torch.get_num_threads()} "
             f"thread(s), one {width} x {width} layer, r = {width // 8}, {tokens} tokens, "
             f"forward + backward, median of {repeats} in turns)", "",
             "| mode | precision | fp32 frozen (ms) | bf16 frozen (ms) | bf16 / fp32 |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['precision']} | {1e3 * r['fp32_frozen_s']:.1f} | "
                     f"{1e3 * r['bf16_frozen_s']:.1f} | {r['ratio']:.3f} |")
    return rows, "\n".join(lines) + "\n"


def collect(runs: Path) -> tuple[list[dict], str]:
    """Final validation loss / perplexity of every ``{fp32,bf16}_seedN`` run under ``runs``."""
    rows = []
    for path in sorted(runs.glob("*_seed*/summary.json")):
        summary = json.loads(path.read_text())
        variant, _, seed = path.parent.name.partition("_seed")
        rows.append({"frozen": variant, "seed": int(seed), "val_loss": summary["val_loss"],
                     "val_ppl": summary["val_ppl"], "step_time_s": summary["step_time_s"],
                     "curve": [[e["step"], e["val_loss"]] for e in summary["curve"]]})
    lines = ["# SST validation loss: fp32 vs bf16 frozen factors", "",
             "Command: `nice bash benchmarks/frozen_bf16_lm.sh` (gpt_cpu, TinyShakespeare char, "
             "r 16, lr 1e-2, 600 steps, T3 100, one thread)", "",
             "| seed | val loss fp32 frozen | val loss bf16 frozen | difference | "
             "step time fp32 / bf16 (s) |", "|---:|---:|---:|---:|---:|"]
    by = {(r["frozen"], r["seed"]): r for r in rows}
    for seed in sorted({r["seed"] for r in rows}):
        a, b = by.get(("fp32", seed)), by.get(("bf16", seed))
        if a and b:
            lines.append(f"| {seed} | {a['val_loss']:.4f} | {b['val_loss']:.4f} | "
                         f"{b['val_loss'] - a['val_loss']:+.4f} | {a['step_time_s']:.3f} / "
                         f"{b['step_time_s']:.3f} |")
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/frozen_bf16")
    parser.add_argument("--collect", default=None, metavar="RUNS",
                        help="tabulate the LM runs under RUNS instead of counting bytes")
    parser.add_argument("--speed", action="store_true",
                        help="time one layer with fp32 and bf16 frozen factors instead")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        rows, text = speed()
        (out / "speed.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "speed.md").write_text(text)
        print(text)
        return
    if args.collect:
        rows, text = collect(Path(args.collect))
        (out / "lm_val_loss.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "lm_val_loss.md").write_text(text)
        print(text)
        return
    rows = measure()
    (out / "state_bytes.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "state_bytes.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
