"""Peak host memory: dense build then ``prepare``, against meta build then ``materialize``.

    nice python benchmarks/meta_materialize.py --preset llama_350m --rank 128 \\
        --out benchmarks/results/meta_materialize

Each path runs in a fresh subprocess (so one path's freed memory cannot hide the other's
peak) that imports everything, notes its resident high-water mark (``ru_maxrss``), then

* ``dense``: ``method.prepare(build_lm(preset, seed))`` (fp32, CPU);
* ``meta``: ``materialize(build_lm(preset, seed, device="meta"), method, device="cpu")``,

and reports ``ru_maxrss`` again: the peak over the whole process, that peak minus the
post-import mark (the build's own share), and that share minus the final model's tensors
("beyond the model": what the build needed besides the model itself; with an accelerator as
the target, the model's tensors would live there and this is what the host would hold; not
measured on one). It also reports the bytes of the final model's
tensors and a float64 sum of every tensor (equal in both paths when the replay is exact:
same seed, same thread count). Writes ``meta_materialize.json`` and ``meta_materialize.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(args) -> dict:
    import torch

    from sparse_spectral import make_method, materialize
    from sparse_spectral.models import build_lm

    torch.set_num_threads(args.threads)
    settings = {} if args.method == "full" else {"rank": args.rank}
    # Warm-up, identical in both paths: import the model classes and run both paths once on
    # a micro model, so the post-import mark includes everything but the build itself.
    make_method(args.method, **{**settings, "rank": 2}).prepare(build_lm("llama_micro", 64, 8))
    materialize(build_lm("llama_micro", 64, 8, device="meta"),
                make_method(args.method, **{**settings, "rank": 2}))
    base = _rss_bytes()
    method = make_method(args.method, **settings)
    start = time.perf_counter()
    if args.child == "dense":
        model = method.prepare(build_lm(args.preset, args.vocab_size, args.block_size,
                                        seed=args.seed))
    else:
        model = build_lm(args.preset, args.vocab_size, args.block_size, seed=args.seed,
                         device="meta")
        model = materialize(model, method, device="cpu")
    seconds = time.perf_counter() - start
    peak = _rss_bytes()
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    model_bytes = sum(t.numel() * t.element_size() for t in tensors)
    return {"path": args.child, "peak_rss": peak, "import_rss": base,
            "build_rss": peak - base, "seconds": seconds, "model_bytes": model_bytes,
            "beyond_model": peak - base - model_bytes,
            "fingerprint": float(sum(t.double().sum() for t in tensors))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama_350m")
    p.add_argument("--method", default="sst")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--vocab_size", type=int, default=32000)
    p.add_argument("--block_size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/meta_materialize")
    p.add_argument("--child", choices=("dense", "meta"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return

    passed = list(argv if argv is not None else sys.argv[1:])
    rows = {}
    for path in ("dense", "meta"):
        out = subprocess.run([sys.executable, __file__, *passed, "--child", path],
                             check=True, capture_output=True, text=True).stdout
        rows[path] = json.loads(out.strip().splitlines()[-1])
        print(rows[path], flush=True)
    dense, meta = rows["dense"], rows["meta"]
    summary = {
        "peak_ratio_meta_over_dense": meta["peak_rss"] / dense["peak_rss"],
        "build_ratio_meta_over_dense": meta["build_rss"] / dense["build_rss"],
        "same_values": dense["fingerprint"] == meta["fingerprint"],
    }
    print(summary)
    from sparse_spectral._util.atomic import atomic_write_json, atomic_write_text

    target = Path(args.out)
    target.mkdir(parents=True, exist_ok=True)
    command = "nice python benchmarks/meta_materialize.py " + " ".join(passed)
    import torch

    atomic_write_json(target / "meta_materialize.json", {
        "command": command, "preset": args.preset, "method": args.method, "rank": args.rank,
        "vocab_size": args.vocab_size, "block_size": args.block_size, "threads": args.threads,
        "torch": torch.__version__, "measure": "ru_maxrss of a fresh subprocess (Linux, KiB)",
        "rows": rows, **summary, "time": time.strftime("%Y-%m-%d %H:%M")})

    def gib(b: float) -> str:
        return f"{b / 2**30:.2f}"

    lines = [f"`{command}` ({args.threads} thread(s), torch {torch.__version__})", "",
             f"{args.preset}, vocab {args.vocab_size}, method {args.method} r = {args.rank}, "
             "target device cpu; peak = `ru_maxrss` of a fresh subprocess.", "",
             "| path | peak RSS (GiB) | peak - post-import RSS (GiB) | final model (GiB) "
             "| beyond the model (GiB) | seconds |", "|---|---|---|---|---|---|"]
    for path, label in (("dense", "dense fp32 build, then prepare"),
                        ("meta", "meta build, then materialize")):
        r = rows[path]
        lines.append(f"| {label} | {gib(r['peak_rss'])} | {gib(r['build_rss'])} | "
                     f"{gib(r['model_bytes'])} | {gib(r['beyond_model'])} | "
                     f"{r['seconds']:.0f} |")
    lines += ["", f"meta / dense: peak {summary['peak_ratio_meta_over_dense']:.2f}x, "
              f"build share {summary['build_ratio_meta_over_dense']:.2f}x; identical values "
              f"(float64 sum of every tensor): {summary['same_values']}.", ""]
    atomic_write_text(target / "meta_materialize.md", "\n".join(lines))


if __name__ == "__main__":
    main()
