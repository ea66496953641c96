"""The ``sst`` command.

``sst --version``, ``sst info`` (torch version, threads, device) and ``sst demo`` (train
an MLP on scikit-learn's digits with full-rank training and with SST, side by side).
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

from . import __version__


def cmd_info(args: argparse.Namespace) -> int:
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"sparse-spectral {__version__}")
    print(f"python          {platform.python_version()}")
    print(f"torch           {torch.__version__}")
    print(f"threads         {torch.get_num_threads()}")
    print(f"device          {device}")
    print(f"cuda available  {cuda}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .tasks.digits import train_digits

    torch.set_num_threads(args.threads)
    print(f"Digits MLP (width {args.width}), {args.epochs} epochs, SST rank {args.rank}, "
          f"T3 = {args.iteration_interval}, seed {args.seed}")
    results = []
    for name in args.methods.split(","):
        lr = args.lr_sst if name == "sst" else args.lr
        results.append(train_digits(name, rank=args.rank, epochs=args.epochs, lr=lr,
                                    width=args.width, seed=args.seed,
                                    iteration_interval=args.iteration_interval))
    print()
    print("| method | trainable params | share | train loss | test accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.method} | {r.trainable:,d} | {100 * r.trainable / r.total:.1f}% | "
              f"{r.train_loss:.4f} | {r.test_accuracy:.4f} | {r.seconds:.1f} |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sst", description="Sparse Spectral Training")
    parser.add_argument("--version", action="version", version=f"sparse-spectral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print versions, threads and device")
    info.set_defaults(func=cmd_info)

    demo = sub.add_parser("demo", help="train an MLP on sklearn digits: full rank vs SST")
    demo.add_argument("--methods", default="full,sst", help="comma-separated method names")
    demo.add_argument("--rank", type=int, default=8)
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--width", type=int, default=256)
    demo.add_argument("--lr", type=float, default=1e-3, help="learning rate of full rank")
    demo.add_argument("--lr_sst", type=float, default=3e-3, help="learning rate of SST")
    demo.add_argument("--iteration_interval", type=int, default=20, help="SST's T3")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"sst: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
