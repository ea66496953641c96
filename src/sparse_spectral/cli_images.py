"""The ``sst train images``, ``sst compare images`` and ``sst ablate`` commands.

Kept beside :mod:`.cli` (which registers them) so that each task's flags live in one place::

    sst train images --dataset fashion-mnist --data-dir DIR --method sst --rank 32
    sst compare images --config examples/images_compare_cpu.toml --data-dir DIR
    sst ablate images --config examples/ablate_images_cpu.toml --data-dir DIR
    sst ablate lm --config examples/ablate_lm_cpu.toml --iteration_intervals 20,100

Settings: dataclass defaults < ``--config`` file < flags, as for the other tasks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .cli import (
    METHOD_OPTIONS,
    _bool,
    _check_method_names,
    _methods_list,
    _parse_method_lr,
    int_list,
    load_config_file,
    settings_from_args,
)

def images_settings_from_args(args: argparse.Namespace):
    """``(ImagesSettings, extras)`` from defaults < config file < flags."""
    from .tasks.images import ImagesSettings

    return settings_from_args(args, ImagesSettings, more_extras=("seeds",))


def cmd_train_images(args: argparse.Namespace) -> int:
    from .tasks.images import run_train

    settings, extras = images_settings_from_args(args)
    _check_method_names([settings.method])
    summary = run_train(settings, resume=bool(extras.get("resume")),
                        progress=not extras.get("no_progress"))
    print(f"{settings.method}: test accuracy {100 * summary['test_accuracy']:.2f}%, val "
          f"accuracy {100 * summary['val_accuracy']:.2f}%, trainable "
          f"{summary['trainable_params']:,d} of {summary['total_params']:,d}; run folder "
          f"{settings.output_dir}")
    return 0


def cmd_compare_images(args: argparse.Namespace) -> int:
    from .tasks.images import DEFAULT_METHODS, run_compare

    settings, extras = images_settings_from_args(args)
    methods = _methods_list(extras, DEFAULT_METHODS)
    method_lr = _parse_method_lr(extras.get("method_lr"))
    run_compare(settings, methods, method_lr, seeds=int_list(extras.get("seeds"), "seeds"),
                progress=not extras.get("no_progress"))
    print((Path(settings.output_dir) / "report.md").read_text())
    return 0


def add_images_arguments(parser: argparse.ArgumentParser, compare: bool) -> None:
    """Flags of ``sst train images`` / ``sst compare images``; defaults in ImagesSettings."""
    S = argparse.SUPPRESS
    add = parser.add_argument
    add("--config", default=S, help="TOML or YAML file of settings (flags override it)")
    if compare:
        add("--methods", default=S, help="comma-separated (default full,lora,relora,galore,sst)")
        add("--method_lr", default=S, help="per-method learning rates, e.g. sst=3e-3,lora=2e-3")
        add("--seeds", default=S, help="comma-separated seeds (default: --seed); numbers are "
            "means over seeds")
    else:
        add("--method", default=S, help="full, lora, relora, galore, sst or an SST variant")
        add("--resume", action="store_true", default=S,
            help="continue from the latest checkpoint in --output_dir")
    add("--dataset", default=S, help="fashion-mnist (default) or digits")
    add("--data-dir", "--data_dir", dest="data_dir", default=S,
        help="data directory holding fashion-mnist/ or FashionMNIST/raw/ "
             "(default $SST_DATA_DIR)")
    add("--val_fraction", type=float, default=S, help="share of training images held out")
    add("--train_limit", type=int, default=S, help="use only the first N training images")
    add("--hidden", default=S, help="hidden widths, comma-separated (default 512,512)")
    add("--rank", type=int, default=S)
    add("--lr", type=float, default=S)
    add("--batch_size", type=int, default=S)
    add("--epochs", type=float, default=S, help="epochs to train (overrides steps)")
    add("--num_training_steps", type=int, default=S, help="used when epochs is unset")
    add("--warmup_steps", type=int, default=S)
    add("--min_lr_ratio", type=float, default=S)
    add("--weight_decay", type=float, default=S)
    add("--grad_clip", type=float, default=S)
    add("--eval_every", type=int, default=S)
    add("--log_every", type=int, default=S, help="steps between metric lines (grad norm)")
    add("--save_every", type=int, default=S)
    add("--seed", type=int, default=S)
    add("--output_dir", default=S)
    add("--tensorboard", action="store_true", default=S)
    add("--threads", type=int, default=S)
    add("--no_progress", action="store_true", default=S)
    group = parser.add_argument_group("method options (used by the methods that have them)")
    for option, kind in METHOD_OPTIONS.items():
        group.add_argument(f"--{option}", type=_bool if kind == "bool" else kind, default=S)


def add_images_task(tasks, compare: bool) -> None:
    """Register ``images`` under ``sst train`` or ``sst compare``."""
    text = "train several methods side by side" if compare else "train one method"
    images = tasks.add_parser("images", help=f"MLP on Fashion-MNIST or digits: {text}")
    add_images_arguments(images, compare)
    images.set_defaults(func=cmd_compare_images if compare else cmd_train_images)


# ---------------------------------------------------------------------- ablate
def cmd_ablate(args: argparse.Namespace) -> int:
    from .tasks.ablate import (
        default_variants,
        run_ablation,
        select_variants,
        settings_with_overrides,
    )

    config = load_config_file(args.config) if args.config else {}
    settings = dict(config.get("settings") or {})
    unknown = sorted(set(config) - {"settings", "variants", "iteration_intervals",
                                    "iterations_per_round", "output_dir", "variant_lr"})
    if unknown:
        raise ValueError(f"--config {args.config}: unknown top-level key(s) {unknown}; allowed: "
                         "settings, variants, iteration_intervals, iterations_per_round, "
                         "output_dir, variant_lr")
    if args.data_dir:
        settings["data_dir"] = args.data_dir
    settings = settings_with_overrides(settings, args.set or [])
    t3 = int_list(args.iteration_intervals if args.iteration_intervals is not None
                  else config.get("iteration_intervals"), "iteration_intervals")
    t2 = int_list(args.iterations_per_round if args.iterations_per_round is not None
                  else config.get("iterations_per_round"), "iterations_per_round")
    names = args.variants if args.variants is not None else config.get("variants")
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    variants = select_variants(default_variants(t3, t2), names)
    output_dir = args.output_dir or config.get("output_dir") or f"runs/ablate_{args.task}"
    if args.threads:
        torch.set_num_threads(args.threads)
    variant_lr = {k: float(v) for k, v in (config.get("variant_lr") or {}).items()}
    for item in (args.variant_lr or "").split(","):
        if item.strip():
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--variant_lr item {item!r} must look like label=lr "
                                 "(e.g. full=1e-3)")
            variant_lr[name.strip()] = float(value)
    run_ablation(args.task, settings, variants, output_dir, progress=not args.no_progress,
                 variant_lr=variant_lr)
    print((Path(output_dir) / "ablation.md").read_text())
    return 0


def add_ablate_parser(sub) -> None:
    """Register ``sst ablate {lm,mt,graph,images}``."""
    from .tasks.ablate import TASK_RUNNERS

    ablate = sub.add_parser("ablate", help="the paper's SST ablation on one task")
    ablate.add_argument("task", choices=sorted(TASK_RUNNERS))
    ablate.add_argument("--config", help="TOML/YAML: [settings] (the task's settings), "
                        "variants, iteration_intervals, iterations_per_round, output_dir, "
                        "[variant_lr]")
    ablate.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one task setting (repeatable), e.g. --set epochs=1 or "
                             "--set method_options.iteration_interval=20")
    ablate.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None)
    ablate.add_argument("--variants", default=None,
                        help="comma-separated variant labels (default: all), e.g. "
                             "sst,sst-uniform,full,relora")
    ablate.add_argument("--iteration_intervals", default=None,
                        help="extra T3 values, comma-separated (variants 'sst T3=N')")
    ablate.add_argument("--iterations_per_round", default=None,
                        help="extra T2 values, comma-separated (variants 'sst T2=N')")
    ablate.add_argument("--variant_lr", default=None,
                        help="learning rates by variant label or method, e.g. "
                             "full=1e-3,relora=1e-2 (others use the settings' lr)")
    ablate.add_argument("--output_dir", default=None)
    ablate.add_argument("--threads", type=int, default=None)
    ablate.add_argument("--no_progress", action="store_true")
    ablate.set_defaults(func=cmd_ablate)
