"""Speed and memory of full, LoRA, ReLoRA*, GaLore and SST, measured side by side in one run.

    python benchmarks/perf.py --out benchmarks/results/perf_cpu   # everything (~25 min, 2 cores)
    python benchmarks/perf.py --quick --out runs/perf_quick               # a 1-minute smoke run

What it measures (all ratios are against full rank in the same run):

* step time: forward + backward + optimizer step + the method's ``after_step``, median of
  ``--repeats`` timed steps after ``--warmup`` steps. The methods take turns step by step
  (the order rotates each round), so drift in machine load hits them alike;
* bytes of weights, gradients and optimizer state from the actual tensors right after an
  optimizer step, and the peak resident memory of a separate process per method;
* re-SVD: the time to re-decompose every SST layer, its share of training time at the default
  schedule (every layer once per ``T2 * T3`` steps), and the longest single-step stall with
  and without staggering; plus one real run of a whole round at ``--schedule_width``;
* scaling: all of the above at every ``--widths`` value (``r = d / 8``) at a fixed number of
  tokens per step, and step time and bytes for several ranks at ``--rank_width``;
* training-state bytes of LLaMA-1B (``r = 128``) and LLaMA-130M (``r = 64`` and 128) shapes
  on the meta device, against the closed-form count.

Models are LLaMA-style decoders built from ``LlamaConfig`` (``--layers`` blocks, heads of
width 64, FFN ``8 d / 3`` rounded up to 32, vocabulary ``--vocab``, untied embeddings).
Writes ``perf.json``, ``perf.md`` and ``perf.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text
from sparse_spectral.accounting import memory_report, planned_state_bytes
from sparse_spectral.methods import make_method
from sparse_spectral.models.presets import ModelPreset, build_lm, get_preset
from sparse_spectral.spectral import SpectralLinear
from sparse_spectral.training.device import autocast

METHODS = ("full", "lora", "relora", "galore", "sst")
MIB = 2**20


# ---------------------------------------------------------------------- models and steps
def lm_shape(width: int, layers: int) -> ModelPreset:
    ffn = 32 * math.ceil(8 * width / 3 / 32)
    return ModelPreset(f"bench_d{width}", "llama", width, layers, max(1, width // 64), ffn)


class Runner:
    """One model + method + optimizer, stepping on a fixed batch ``ids (B, T)``.

    Args:
        shape: a width (a ``--layers``-block LLaMA shape, :func:`lm_shape`) or a preset.
        micro_batches: split ``ids`` into this many micro-batches along ``B`` and
            accumulate their gradients (``args.micro_batches``; default 1), so large
            token counts per step fit in memory.
    """

    def __init__(self, name: str, shape: int | ModelPreset, rank: int, args, ids: torch.Tensor):
        spec = lm_shape(shape, args.layers) if isinstance(shape, int) else shape
        self.model = build_lm(spec, args.vocab, ids.shape[1], seed=0)
        self.model.to(ids.device)  # convert on the device: SVDs of CUDA weights run on CUDA
        self.method = make_method(name, **({} if name == "full" else {"rank": rank}))
        self.model = self.method.prepare(self.model)
        self.optimizer = self.method.build_optimizer(self.model, lr=1e-4)
        self.micro = ids.chunk(getattr(args, "micro_batches", 1))
        self.ids = ids
        self.precision = getattr(args, "precision", "fp32")  # fp32 or bf16-mixed
        self.step_count = 0
        self.memory = None

    def step(self) -> float:
        """One training step; returns its wall time in seconds."""
        synchronize(self.ids.device)
        start = time.perf_counter()
        for micro in self.micro:
            with autocast(self.precision, self.ids.device):
                loss = self.model(input_ids=micro, labels=micro).loss / len(self.micro)
            loss.backward()
        self.optimizer.step()
        self.memory = memory_report(self.model, self.optimizer)  # grads still allocated
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        self.method.after_step(self.step_count, self.optimizer)
        # memory_report only sums tensor sizes (microseconds), so it stays inside the timing.
        synchronize(self.ids.device)
        return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(args) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.tokens // args.seq, args.seq), generator=g)
    return ids.to(args.device)


def step_times_in_turns(runners: dict, warmup: int, repeats: int) -> dict:
    """Step every runner ``warmup`` times, then ``repeats`` times in rotating order.

    Returns each runner's step times (seconds) after warm-up. Taking turns, with the order
    rotated each round, makes machine load hit every runner alike.
    """
    keys = list(runners)
    for _ in range(warmup):
        for key in keys:
            runners[key].step()
    times = {key: [] for key in keys}
    for rep in range(repeats):
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
            times[key].append(runners[key].step())
    return times


def time_side_by_side(width: int, rank: int, methods, args) -> dict:
    """Median step time and state bytes of each method at one width and rank."""
    ids = batch(args)
    runners = {name: Runner(name, width, rank, args, ids) for name in methods}
    times = step_times_in_turns(runners, args.warmup, args.repeats)
    out = {}
    for name in methods:
        report = runners[name].memory
        out[name] = {"step_ms": 1e3 * statistics.median(times[name]),
                     "step_ms_all": [1e3 * t for t in times[name]],
                     "weights": report.weights, "gradients": report.gradients,
                     "optimizer_state": report.optimizer_state}
    full = out.get("full")
    for entry in out.values():
        if full:
            entry["time_ratio"] = entry["step_ms"] / full["step_ms"]
            entry["grad_opt_ratio"] = ((entry["gradients"] + entry["optimizer_state"])
                                       / (full["gradients"] + full["optimizer_state"]))
            entry["state_ratio"] = (sum(entry[k] for k in ("weights", "gradients",
                                                           "optimizer_state"))
                                    / sum(full[k] for k in ("weights", "gradients",
                                                            "optimizer_state")))
    if "sst" in runners:
        out["sst"]["resvd"] = resvd_cost(runners["sst"], out["sst"]["step_ms"] / 1e3)
        out["sst"]["modes"] = sorted({layer.mode_for(torch.empty(args.tokens, layer.in_features))
                                      for layer in runners["sst"].model.modules()
                                      if isinstance(layer, SpectralLinear)})
    return out


def resvd_cost(runner: Runner, step_seconds: float, repeats: int = 3) -> dict:
    """Re-SVD time of every layer and its share of training at the default schedule."""
    method = runner.method
    per_layer = []
    for _, layer in method.layers:
        samples = []
        for _ in range(repeats):
            synchronize(layer.s.device)
            start = time.perf_counter()
            layer.resvd_(runner.optimizer)
            synchronize(layer.s.device)
            samples.append(time.perf_counter() - start)
        per_layer.append(statistics.median(samples))
    cfg = method.config
    rounds = [method._rounds(layer) for _, layer in method.layers]
    # Staggered: layer l re-decomposes at round position (i + l mod T2) = 0.
    groups: dict[int, float] = {}
    for index, (seconds, t2) in enumerate(zip(per_layer, rounds)):
        groups[index % t2] = groups.get(index % t2, 0.0) + seconds
    total = sum(per_layer)
    steps_per_round = max(rounds) * cfg.iteration_interval
    return {"all_layers_s": total, "iteration_interval": cfg.iteration_interval,
            "iterations_per_round": max(rounds), "steps_per_round": steps_per_round,
            "share": total / (steps_per_round * step_seconds + total),
            "stall_together": total / step_seconds,
            "stall_staggered": max(groups.values()) / step_seconds}


def measured_round(width: int, args) -> dict:
    """Train SST for one whole round (every layer re-SVDs once) and time the re-SVDs."""
    ids = batch(args)
    runner = Runner("sst", width, width // 8, args, ids)
    spent = []
    for _, layer in runner.method.layers:
        original = layer.resvd_

        def timed(*a, _original=original, _layer=layer, **k):
            synchronize(_layer.s.device)
            start = time.perf_counter()
            _original(*a, **k)
            synchronize(_layer.s.device)
            spent.append(time.perf_counter() - start)

        layer.resvd_ = timed
    steps = max(runner.method._rounds(layer) for _, layer in runner.method.layers) \
        * runner.method.config.iteration_interval
    start = time.perf_counter()
    for _ in range(steps):
        runner.step()
    total = time.perf_counter() - start
    return {"width": width, "steps": steps, "resvd_calls": len(spent),
            "resvd_s": sum(spent), "train_s": total, "share": sum(spent) / total}


# ---------------------------------------------------------------------- peak memory
def peak_in_subprocess(width: int, rank: int, name: str, args) -> dict:
    command = [sys.executable, __file__, "--_peak", name, "--_peak_width", str(width),
               "--_peak_rank", str(rank), "--layers", str(args.layers), "--vocab",
               str(args.vocab), "--tokens", str(args.tokens), "--seq", str(args.seq),
               "--threads", str(args.threads), "--device", str(args.device)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory figure (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_child(args) -> None:
    """Child process: build one method, train 3 steps, print peak and baseline RSS (bytes).

    The peak includes building the dense model and converting it (each method starts from
    the same dense model, as a user's script would).
    """
    torch.set_num_threads(args.threads)
    importlib.import_module("transformers.models.llama.modeling_llama")  # not training memory

    baseline = _status_bytes("VmRSS")
    runner = Runner(args._peak, args._peak_width, args._peak_rank, args, batch(args))
    for _ in range(3):
        runner.step()
    # VmHWM belongs to this process image; getrusage's ru_maxrss would also count the
    # parent's resident set at fork time, which Linux carries across exec.
    peak = _status_bytes("VmHWM")
    result = {"peak": peak, "baseline": baseline, "training_peak": peak - baseline}
    if runner.ids.device.type == "cuda":  # on a GPU the training state lives in device memory
        result["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(runner.ids.device)
        result["training_peak"] = result["cuda_peak_allocated"]
    print(json.dumps(result))


# ---------------------------------------------------------------------- LLaMA shapes
def analytic_state_bytes(d: int, ffn: int, layers: int, vocab: int, rank: int | None) -> int:
    """Closed-form fp32 weights + grads + 2 AdamW moments of an untied LLaMA (no GQA).

    Full rank: ``16 P`` bytes. SST (rank r) per block linear (m, n), k = min(m, n):
    weights ``k (m + n) + k``, trainable ``r (m + n) + k``; everything else is dense.
    """
    linears = [(d, d)] * 4 + [(ffn, d), (ffn, d), (d, ffn)]
    norms = 2 * d * layers + d
    dense = 2 * vocab * d + norms  # embeddings, head, norms: trained densely by every method
    if rank is None:
        params = dense + layers * sum(m * n for m, n in linears)
        return 16 * params
    weights = trainable = 0
    for m, n in linears:
        k = min(m, n)
        weights += k * (m + n) + k
        trainable += rank * (m + n) + k
    return 4 * (dense + layers * weights) + 12 * (dense + layers * trainable)


def llama_shapes(args) -> list[dict]:
    rows = []
    for preset_name, rank in (("llama_1b", 128), ("llama_130m", 64), ("llama_130m", 128)):
        spec = get_preset(preset_name)
        entry = {"model": preset_name, "rank": rank, "d": spec.hidden_size,
                 "ffn": spec.ffn_size, "layers": spec.num_layers, "vocab": 32000}
        for name in ("full", "lora", "sst"):
            with torch.device("meta"):
                model = build_lm(spec, 32000, 1024)
            model = make_method(name, **({} if name == "full" else {"rank": rank})).prepare(model)
            entry[name] = planned_state_bytes(model).total
        for name, r in (("full", None), ("sst", rank)):
            entry[f"{name}_analytic"] = analytic_state_bytes(spec.hidden_size, spec.ffn_size,
                                                             spec.num_layers, 32000, r)
        entry["sst_ratio"] = entry["sst"] / entry["full"]
        entry["sst_ratio_analytic"] = entry["sst_analytic"] / entry["full_analytic"]
        entry["lora_ratio"] = entry["lora"] / entry["full"]
        entry["sst_vs_analytic"] = entry["sst"] / entry["sst_analytic"]
        rows.append(entry)
    return rows


# ---------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    a = results["settings"]
    lines = [f"# SST speed and memory benchmark ({results['machine']})", "",
             f"Command: `{results['command']}`", "",
             *([f"Peak memory re-measured with `{results['peak_command']}`.", ""]
               if results.get("peak_command") else []),
             f"LLaMA-style decoder, {a['layers']} blocks, vocabulary {a['vocab']}, "
             f"{a['tokens']} tokens per step (batch {a['tokens'] // a['seq']} x {a['seq']}), "
             f"{a['threads']} threads, median of {a['repeats']} steps after {a['warmup']}.", "",
             "## Step time and state bytes by width (r = d / 8)", "",
             "| width | rank | method | step (ms) | / full | weights (MiB) | grads + opt (MiB) "
             "| grads + opt / full | peak RSS above baseline (MiB) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["widths"]:
        for name, e in row["methods"].items():
            peak = e.get("peak", {}).get("training_peak")
            lines.append(
                f"| {row['width']} | {row['rank']} | {name} | {e['step_ms']:.1f} | "
                f"{e['time_ratio']:.3f} | {e['weights'] / MIB:.2f} | "
                f"{(e['gradients'] + e['optimizer_state']) / MIB:.2f} | "
                f"{e['grad_opt_ratio']:.3f} | {'' if peak is None else f'{peak / MIB:.0f}'} |")
    lines += ["", "## SST against LoRA at the same rank", "",
              "| width | SST / LoRA grads + opt bytes | SST / LoRA step time | SST evaluation |",
              "|---:|---:|---:|---|"]
    for row in results["widths"]:
        m = row["methods"]
        if "lora" in m and "sst" in m:
            lo, ss = m["lora"], m["sst"]
            ratio = (ss["gradients"] + ss["optimizer_state"]) / (lo["gradients"]
                                                                 + lo["optimizer_state"])
            lines.append(f"| {row['width']} | {ratio:.3f} | {ss['step_ms'] / lo['step_ms']:.3f}"
                         f" | {', '.join(ss.get('modes', []))} |")
    lines += ["", "## Re-SVD", "",
              "| width | all layers (ms) | steps per round (T2 x T3) | share of training | "
              "one-step stall, together | one-step stall, staggered |",
              "|---:|---:|---:|---:|---:|---:|"]
    for row in results["widths"]:
        r = row["methods"].get("sst", {}).get("resvd")
        if r:
            lines.append(f"| {row['width']} | {1e3 * r['all_layers_s']:.1f} | "
                         f"{r['iterations_per_round']} x {r['iteration_interval']} | "
                         f"{100 * r['share']:.3f}% | {100 * r['stall_together']:.1f}% | "
                         f"{100 * r['stall_staggered']:.1f}% |")
    if results.get("round"):
        r = results["round"]
        lines += ["", f"Measured over one whole round at width {r['width']}: {r['steps']} steps, "
                  f"{r['resvd_calls']} layer re-SVDs took {r['resvd_s']:.2f} s of "
                  f"{r['train_s']:.1f} s ({100 * r['share']:.3f}%)."]
    if results.get("ranks"):
        lines += ["", f"## Rank scaling at width {results['rank_width']}", "",
                  "| rank | method | step (ms) | / full | grads + opt (MiB) | / full |",
                  "|---:|---|---:|---:|---:|---:|"]
        for row in results["ranks"]:
            for name, e in row["methods"].items():
                lines.append(f"| {row['rank']} | {name} | {e['step_ms']:.1f} | "
                             f"{e['time_ratio']:.3f} | "
                             f"{(e['gradients'] + e['optimizer_state']) / MIB:.2f} | "
                             f"{e['grad_opt_ratio']:.3f} |")
    lines += ["", "## Training-state bytes at LLaMA shapes (fp32, weights + grads + AdamW, "
              "meta device)", "",
              "| model | rank | full (GiB) | SST (GiB) | SST / full | analytic SST / full | "
              "SST / analytic | LoRA / full |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in results["llama"]:
        lines.append(f"| {e['model']} | {e['rank']} | {e['full'] / 2**30:.2f} | "
                     f"{e['sst'] / 2**30:.2f} | {e['sst_ratio']:.4f} | "
                     f"{e['sst_ratio_analytic']:.4f} | {e['sst_vs_analytic']:.4f} | "
                     f"{e['lora_ratio']:.4f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    widths = [row["width"] for row in results["widths"]]
    for name in METHODS:
        if all(name in row["methods"] for row in results["widths"]):
            ax_t.plot(widths, [row["methods"][name]["time_ratio"] for row in results["widths"]],
                      marker="o", label=name)
            ax_m.plot(widths, [row["methods"][name]["state_ratio"]
                               for row in results["widths"]], marker="o", label=name)
    ax_t.axhline(1.10, color="grey", linestyle=":", label="target 1.10 (SST)")
    for ax, title in ((ax_t, "step time / full rank"),
                      (ax_m, "weights + grads + optimizer bytes / full rank")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set_xlabel("width d (r = d / 8)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)


def remeasure_peaks(out: Path, args) -> None:
    """Replace the peak-memory figures of an earlier run (same model settings)."""
    results = json.loads((out / "perf.json").read_text())
    saved = results["settings"]
    for key in ("layers", "vocab", "tokens", "seq"):
        setattr(args, key, saved[key])
    for row in results["widths"]:
        print(f"peak memory at width {row['width']} ...", flush=True)
        for name, entry in row["methods"].items():
            entry["peak"] = peak_in_subprocess(row["width"], row["rank"], name, args)
    results["peak_command"] = "python " + " ".join(["benchmarks/perf.py", *sys.argv[1:]])
    atomic_write_json(out / "perf.json", results)
    atomic_write_text(out / "perf.md", markdown(results))
    print((out / "perf.md").read_text())


# ---------------------------------------------------------------------- main
def add_run_arguments(p: argparse.ArgumentParser, repeats: int, threads: int) -> None:
    """The model shape, batch and timing flags every timing script here shares."""
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: CUDA allocator)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/perf_cpu")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--rank_width", type=int, default=512)
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--schedule_width", type=int, default=256,
                   help="width of the whole-round re-SVD measurement (0: skip)")
    add_run_arguments(p, repeats=5, threads=2)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16-mixed"),
                   help="fp32, or bf16 autocast around forward and loss (fp32 parameters)")
    p.add_argument("--no_peak", action="store_true", help="skip the per-process peak memory")
    p.add_argument("--peak_only", action="store_true",
                   help="re-measure only the peak memory of the widths in <out>/perf.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: widths 64 128, 1024 tokens, ranks 8 16, no whole round")
    p.add_argument("--_peak", help=argparse.SUPPRESS)
    p.add_argument("--_peak_width", type=int, help=argparse.SUPPRESS)
    p.add_argument("--_peak_rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    if args.quick:
        args.widths, args.tokens, args.seq = [64, 128], 1024, 128
        args.rank_width, args.ranks, args.schedule_width = 128, [8, 16], 0
        args.warmup, args.repeats = 1, 3
    if args.tokens % args.seq:
        p.error(f"--tokens={args.tokens} must be a multiple of --seq={args.seq}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._peak:
        peak_child(args)
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.peak_only:
        remeasure_peaks(out, args)
        return
    results = {"command": "python " + " ".join(["benchmarks/perf.py", *(argv or sys.argv[1:])]),
               "machine": f"{platform.machine()}, {args.threads} threads, torch "
                          f"{torch.__version__}, "
                          + (torch.cuda.get_device_name(args.device)
                             if args.device.type == "cuda" else "CPU"),
               "settings": {k: str(v) if isinstance(v, torch.device) else v
                            for k, v in vars(args).items() if not k.startswith("_")},
               "widths": [], "ranks": [], "rank_width": args.rank_width}

    def save():
        atomic_write_json(out / "perf.json", results)
        atomic_write_text(out / "perf.md", markdown(results))

    results["llama"] = llama_shapes(args)
    save()
    for width in args.widths:
        rank = max(1, width // 8)
        print(f"width {width}, rank {rank} ...", flush=True)
        row = {"width": width, "rank": rank, "methods": time_side_by_side(width, rank, METHODS,
                                                                          args)}
        if not args.no_peak:
            for name in METHODS:
                row["methods"][name]["peak"] = peak_in_subprocess(width, rank, name, args)
        results["widths"].append(row)
        save()
    for rank in args.ranks:
        print(f"rank {rank} at width {args.rank_width} ...", flush=True)
        results["ranks"].append({"rank": rank, "methods": time_side_by_side(
            args.rank_width, rank, ("full", "lora", "galore", "sst"), args)})
        save()
    if args.schedule_width:
        print(f"one whole round at width {args.schedule_width} ...", flush=True)
        results["round"] = measured_round(args.schedule_width, args)
    save()
    plot(results, out / "perf.png")
    print((out / "perf.md").read_text())


if __name__ == "__main__":
    main()
