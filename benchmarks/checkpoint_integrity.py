"""What trustworthy checkpoints cost at LLaMA-130M's shape: checksums, fsync, finite check.

    PYTHONPATH=src nice python benchmarks/checkpoint_integrity.py [--methods full,sst]

For each method the ``llama_130m`` preset (vocabulary 32,000, SST r = 64) is converted, one
AdamW step is taken on a random batch (so the optimizer holds its moments), and a checkpoint
is saved through :func:`~sparse_spectral.training.checkpoint.save_checkpoint` three times.
Timed apart: the whole save; inside it, :func:`~.manifest.write_manifest` (fsync of every
file, sha256 of every file, the manifest, the directory fsync); the finite-value check the
loop runs before a save (:func:`~.divergence.non_finite_tensors`); and the verification a
resume runs (:func:`~.checkpoint.verify_checkpoint`: sha256 of every file, then reading
``state.pt``). Medians of the repeats; writes ``benchmarks/results/checkpoint_integrity/
results.json``. The files are read back from the page cache, so the hash figures are CPU
time, not disk time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def measure(method_name: str, repeats: int) -> dict:
    import sparse_spectral.training.checkpoint as checkpoint
    from sparse_spectral.methods import make_method
    from sparse_spectral.models.presets import build_lm
    from sparse_spectral.training.divergence import non_finite_tensors

    model = build_lm("llama_130m", vocab_size=32000, block_size=256)
    options = {"rank": 64} if method_name != "full" else {}
    method = make_method(method_name, **options)
    model = method.prepare(model)
    optimizer = method.build_optimizer(model, lr=1e-4)
    ids = torch.randint(0, 32000, (1, 64))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    import sparse_spectral.training.manifest as manifest

    timings = {"save_s": [], "manifest_s": [], "fsync_s": [], "sha256_s": [],
               "finite_check_s": [], "verify_s": []}
    real, real_fsync, real_sha = (checkpoint.write_manifest, manifest.fsync_file,
                                  manifest.file_sha256)
    spent = {"fsync_s": 0.0, "sha256_s": 0.0}

    def timed(fn, key):
        def call(path):
            began = time.perf_counter()
            out = fn(path)
            spent[key] += time.perf_counter() - began
            return out
        return call

    def timed_manifest(directory):
        began = time.perf_counter()
        out = real(directory)
        timings["manifest_s"].append(time.perf_counter() - began)
        return out

    checkpoint.write_manifest = timed_manifest
    manifest.fsync_file = timed(real_fsync, "fsync_s")
    manifest.file_sha256 = timed(real_sha, "sha256_s")
    sizes = {}
    try:
        with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
            for repeat in range(repeats):
                began = time.perf_counter()
                bad = non_finite_tensors(model, optimizer)
                timings["finite_check_s"].append(time.perf_counter() - began)
                assert not bad, bad
                spent.update(fsync_s=0.0, sha256_s=0.0)
                began = time.perf_counter()
                path = checkpoint.save_checkpoint(tmp, repeat + 1, model, optimizer, scheduler,
                                                  method, settings={})
                timings["save_s"].append(time.perf_counter() - began)
                for key in spent:  # the manifest step's (the verify below hashes again)
                    timings[key].append(spent[key])
                began = time.perf_counter()
                checkpoint.verify_checkpoint(path)
                timings["verify_s"].append(time.perf_counter() - began)
                sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    finally:
        checkpoint.write_manifest, manifest.fsync_file, manifest.file_sha256 = (
            real, real_fsync, real_sha)
    total = sum(sizes.values())
    out = {key: statistics.median(values) for key, values in timings.items()}
    out.update(bytes=total, files=sizes,
               manifest_share_of_save=out["manifest_s"] / out["save_s"],
               sha256_gb_per_s=total / 1e9 / out["sha256_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="full,sst")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "methods": {}}
    for name in args.methods.split(","):
        results["methods"][name] = measure(name, args.repeats)
        r = results["methods"][name]
        print(f"{name}: {r['bytes'] / 2**20:.0f} MiB; save {r['save_s']:.2f} s, of which the "
              f"manifest step {r['manifest_s']:.2f} s ({100 * r['manifest_share_of_save']:.0f}%:"
              f" fsync {r['fsync_s']:.2f} s, sha256 {r['sha256_s']:.2f} s = "
              f"{r['sha256_gb_per_s']:.2f} GB/s); verify {r['verify_s']:.2f} s; finite check "
              f"{r['finite_check_s']:.3f} s", flush=True)
    out = ROOT / "benchmarks" / "results" / "checkpoint_integrity"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
