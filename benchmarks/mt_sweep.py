"""Multi30k translation sweep: BLEU of full, LoRA, ReLoRA* and SST, Euclidean and hyperbolic.

Runs ``sst train mt`` for every (stage, method) below, one after the other (one thread each:
the machine is shared), and writes ``<out>/sweep.json`` and ``<out>/sweep.md`` with every
finished run's test BLEU and, per stage, the share of the BLEU gap SST closes:

    gap closed = (SST - best other low-rank) / (full - best other low-rank)

(the SPEC's definition, written for a higher-is-better score). A stage whose runs are not all
finished is listed with what is missing. Finished runs are kept (their ``summary.json``), so
the sweep can be stopped and resumed; ``--stage`` picks stages, ``--methods`` methods. Several
sweep processes may run the same stages at once: each run is claimed by one of them.

    python benchmarks/mt_sweep.py --out runs/mt_sweep --stage euclid-d64-r8 --data-dir DIR
    python benchmarks/mt_sweep.py --out runs/mt_sweep --stage hyper-d64-r8 --data-dir DIR
    python benchmarks/mt_sweep.py --out runs/mt_sweep --report-only   # tables only

Reduced protocol (the paper trains IWSLT'14 to convergence; a full 10-epoch d 64 run here is
about 30 minutes per method on one thread): d_model 64 or 128 with r = d/8 and d/16, 4 heads,
d_ff = 4 d, 2 + 2 layers, joint BPE 4,000, batches of 4,096 padded tokens, 2 epochs
(Euclidean) or 1 (hyperbolic: see ``STAGES``), inverse-sqrt schedule with
100 warm-up steps, one untuned peak lr shared by every method, label smoothing 0.1, seed 0,
SST T3 = ReLoRA* merge interval = 50, final model decoded on test_2016_flickr with beam 4 and
scored with sacreBLEU (cased, 13a).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sparse_spectral._util.atomic import atomic_write, atomic_write_json, atomic_write_text

COMMON = ["--num_heads", "4", "--num_layers", "2", "--vocab_size", "4000",
          "--max_tokens", "4096", "--warmup_steps", "100",
          "--lr", "2e-3", "--label_smoothing", "0.1", "--eval_every", "146",
          "--beam_size", "4", "--seed", "0", "--threads", "1", "--no_progress",
          "--num_examples", "3"]
T3 = 50  # SST's T3 and ReLoRA*'s merge interval: given to the methods that refresh
METHODS = ("full", "lora", "relora", "sst")

# stage -> (model family, d_model, rank, epochs); stages run in this priority order.
# The hyperbolic stages train 1 epoch: chosen beforehand from a short timing on the loaded
# machine (steps about 1.7x the Euclidean ones, decoding without a key/value cache); the
# finished runs then cost about the same as the Euclidean ones, so "hyper-d64-r8-2ep" repeats
# every method at the Euclidean stages' 2 epochs, and "euclid-d64-r8-6ep" asks whether the
# gap shrinks with three times the training. Full rank runs once per (family, width,
# epochs) and serves every rank (``run_dir_of``). Compare methods within a stage only.
STAGES = {
    "euclid-d64-r8": ("euclidean", 64, 8, 2),
    "hyper-d64-r8": ("hyperbolic", 64, 8, 1),
    "euclid-d64-r4": ("euclidean", 64, 4, 2),
    "hyper-d64-r4": ("hyperbolic", 64, 4, 1),
    "euclid-d128-r16": ("euclidean", 128, 16, 2),
    "hyper-d128-r16": ("hyperbolic", 128, 16, 1),
    "euclid-d128-r8": ("euclidean", 128, 8, 2),
    "hyper-d128-r8": ("hyperbolic", 128, 8, 1),
    "hyper-d64-r8-2ep": ("hyperbolic", 64, 8, 2),
    "euclid-d64-r8-6ep": ("euclidean", 64, 8, 6),
}

# The grid (d 64 and 128, r = d/8 and d/16, both families); the other stages train
# longer and are reported beside it, not averaged into it.
GRID = tuple(name for name in STAGES if not name.endswith("ep"))


def run_dir_of(out: Path, stage: str, method: str) -> Path:
    """Where a run lives. Full rank has no rank: the first stage with the same model family,
    width and epochs owns its run, and every other rank's stage reads that one."""
    if method == "full":
        family, d, _, epochs = STAGES[stage]
        stage = next(s for s, (f, w, _, e) in STAGES.items() if (f, w, e) == (family, d, epochs))
    return out / stage / method


def command(stage: str, method: str, run_dir: Path, data_dir: str | None) -> list[str]:
    """The exact ``sst train mt`` command line of one run."""
    family, d, rank, epochs = STAGES[stage]
    from sparse_spectral.methods import method_config_class, method_config_fields

    cmd = [sys.executable, "-m", "sparse_spectral.cli", "train", "mt", "--model", family,
           "--method", method, "--d_model", str(d), "--epochs", str(epochs),
           "--output_dir", str(run_dir), "--overwrite", *COMMON]  # unfinished: start again
    # A flag the method lacks is an error: full rank gets no rank, LoRA no interval.
    if "rank" in method_config_fields(method):
        cmd += ["--rank", str(rank)]
    if method_config_class(method).refresh_interval_field:
        cmd += ["--iteration_interval", str(T3)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    return cmd


def claim(run_dir: Path) -> Path | None:
    """Mark ``run_dir`` as taken by this process; None if a live process already has it.

    The marker ``<run_dir>.claim`` (created with O_EXCL, holding the owner's pid) lets several
    sweep processes share one list of stages; a dead owner's marker is taken over.
    """
    marker = run_dir.with_name(run_dir.name + ".claim")
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = marker.read_text().strip()
        if not owner or _alive(int(owner)):  # empty: its owner is writing the pid now
            return None
        marker.unlink(missing_ok=True)
        return claim(run_dir)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return marker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def run_one(out: Path, stage: str, method: str, data_dir: str | None) -> None:
    run_dir = run_dir_of(out, stage, method)
    if (run_dir / "summary.json").exists():  # finished earlier
        return
    marker = claim(run_dir)
    if marker is None:
        print(f"{stage} {method}: another sweep process is running it", flush=True)
        return
    cmd = command(stage, method, run_dir, data_dir)
    log = run_dir.parent / f"{method}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {stage} {method}: {' '.join(cmd)}", flush=True)
    try:
        with open(log, "w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    finally:
        marker.unlink(missing_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {stage} {method}: exit {code}", flush=True)


def gap_closed(score: dict[str, float], higher_is_better: bool = True) -> float | None:
    """``(sst - best low-rank) / (full - best low-rank)`` or None (missing, or no gap).

    ``score`` maps method -> BLEU (higher is better) or validation NLL (lower is better:
    pass ``higher_is_better=False``; the share is then computed on ``-score``).
    """
    sign = 1.0 if higher_is_better else -1.0
    others = [sign * score[m] for m in ("lora", "relora") if m in score]
    if "full" not in score or "sst" not in score or not others:
        return None
    base = max(others)
    if sign * score["full"] <= base:
        return None
    return (sign * score["sst"] - base) / (sign * score["full"] - base)


def collect(out: Path) -> dict:
    stages = {}
    for stage, (family, d, rank, epochs) in STAGES.items():
        rows, missing = {}, []
        for method in METHODS:
            run_dir = run_dir_of(out, stage, method)
            path = run_dir / "summary.json"
            if not path.exists():
                missing.append(method)
                continue
            s = json.loads(path.read_text())
            rows[method] = {k: s.get(k) for k in (
                "test_bleu", "val_loss", "test_loss", "trainable_params", "total_params",
                "step_time_s", "epoch_time_s", "final_step", "epochs_trained",
                "bleu_signature", "wall_time_s")}
            rows[method]["command"] = " ".join(command(stage, method, run_dir,
                                                       s["settings"].get("data_dir")))
        bleu = {m: r["test_bleu"] for m, r in rows.items()}
        stages[stage] = {"model": family, "d_model": d, "rank": rank, "epochs": epochs,
                         "runs": rows,
                         "missing": missing, "gap_closed": gap_closed(bleu),
                         "gap_closed_val_nll": gap_closed(
                             {m: r["val_loss"] for m, r in rows.items()}, False)}
    return {"common": COMMON, "stages": stages}


def summary_lines(stages: dict) -> list[str]:
    """The paper's two claims against the complete grid stages: the mean share of the gap SST
    closes on Euclidean Transformers (66.7%) and SST beating full rank on hyperbolic ones."""
    complete = {name: s for name, s in stages.items() if not s["missing"] and name in GRID}
    shares = [s["gap_closed"] for s in complete.values()
              if s["model"] == "euclidean" and s["gap_closed"] is not None]
    lines = []
    if shares:
        lines.append(f"Mean share of the BLEU gap closed by SST over {len(shares)} complete "
                     f"Euclidean grid stage(s): {100 * sum(shares) / len(shares):.1f}% "
                     "(paper: 66.7%).")
    hyper = {n: s for n, s in complete.items() if s["model"] == "hyperbolic"}
    if hyper:
        wins = [n for n, s in hyper.items()
                if s["runs"]["sst"]["test_bleu"] > s["runs"]["full"]["test_bleu"]]
        nll_wins = [n for n, s in hyper.items()
                    if s["runs"]["sst"]["val_loss"] < s["runs"]["full"]["val_loss"]]
        lines.append(f"SST beats full rank in test BLEU in {len(wins)} of {len(hyper)} complete "
                     f"hyperbolic grid stage(s){': ' + ', '.join(wins) if wins else ''}, in "
                     f"validation NLL in {len(nll_wins)} (paper: often, in BLEU).")
    return lines


def render(result: dict) -> str:
    lines = [f"Common flags: `{' '.join(result['common'])}`", "",
             ("Test BLEU; the gap closed by SST in BLEU and, less noisy this early in training, "
              "in validation NLL."), "",
             ("| stage | model | d | r | epochs | full | LoRA | ReLoRA* | SST | "
              "gap closed (BLEU) | gap closed (val NLL) | missing |"),
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    for stage, s in result["stages"].items():
        cells = [f"{s['runs'][m]['test_bleu']:.2f}" if m in s["runs"] else "-" for m in METHODS]
        lines.append(f"| {stage} | {s['model']} | {s['d_model']} | {s['rank']} | {s['epochs']} | "
                     + " | ".join(cells) + f" | {share(s['gap_closed'])} | "
                     f"{share(s['gap_closed_val_nll'])} | {', '.join(s['missing']) or '-'} |")
    lines += [""] + summary_lines(result["stages"])
    lines += ["", "| stage | method | test BLEU | val loss | trainable / total | epoch s |",
              "|---|---|---:|---:|---:|---:|"]
    for stage, s in result["stages"].items():
        for m, r in s["runs"].items():
            lines.append(f"| {stage} | {m} | {r['test_bleu']:.2f} | {r['val_loss']:.4f} | "
                         f"{r['trainable_params']:,d} / {r['total_params']:,d} | "
                         f"{r['epoch_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/mt_sweep")
    parser.add_argument("--stage", action="append", choices=sorted(STAGES),
                        help="stages to run (repeatable; default none: --report-only)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        for stage in args.stage or []:
            for method in args.methods.split(","):
                run_one(out, stage, method, args.data_dir)
    result = collect(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sweep.json", result)
    text = render(result)
    atomic_write_text(out / "sweep.md", text)
    plot(result, out / "sweep.png")
    print(text)


def plot(result: dict, path: Path) -> None:
    """Test BLEU per stage and method, grouped bars; stages with no run are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [name for name, s in result["stages"].items() if s["runs"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(stages)), 4))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        heights = [result["stages"][name]["runs"].get(method, {}).get("test_bleu", 0.0)
                   for name in stages]
        offset = (i - (len(METHODS) - 1) / 2) * width
        ax.bar([j + offset for j in range(len(stages))], heights, width, label=method)
    ax.set_xticks(range(len(stages)), stages, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test BLEU (sacreBLEU)")
    ax.set_title("Multi30k de-en, reduced protocol (see sweep.md)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
