"""Learning-rate probe for the Fashion-MNIST comparison (benchmarks/README.md, "Images").

Each method trains the MLP 784-512-512-10 (rank 32, T3 = 50) for 2 epochs at one learning
rate, seed 0; the comparison then uses, per method, the rate with the best *validation*
accuracy (the test split is not looked at). Run from the project root:

    PYTHONPATH=src python benchmarks/images_lr_probe.py --data-dir ../shared/data \
        --lrs 1e-3,3e-3 --methods full,lora,relora,galore,sst
    PYTHONPATH=src python benchmarks/images_lr_probe.py --data-dir ../shared/data \
        --lrs 1e-2 --methods lora,relora,galore,sst

Reports land in runs/lr_probe/lr<LR>/report.md.
"""

from __future__ import annotations

import argparse

import torch

from sparse_spectral.report import render
from sparse_spectral.tasks.images import IMAGES, ImagesSettings
from sparse_spectral.training.compare import run_compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--lrs", default="1e-3,3e-3")
    parser.add_argument("--methods", default="full,lora,relora,galore,sst")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for lr in (float(v) for v in args.lrs.split(",")):
        settings = ImagesSettings.from_dict(dict(
            data_dir=args.data_dir, lr=lr, hidden=[512, 512], rank=32, epochs=2,
            batch_size=128, eval_every=400, warmup_steps=50, iteration_interval=50,
            output_dir=f"runs/lr_probe/lr{lr:g}", overwrite=True))
        run_compare(IMAGES, settings, args.methods.split(","), progress=False)
        render(settings.output.output_dir)


if __name__ == "__main__":
    main()
