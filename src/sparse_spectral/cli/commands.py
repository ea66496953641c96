"""The ``sst`` sub-commands, generic over the task registry.

    sst train TASK [flags]        one method: a run folder (metrics, checkpoints, summary)
    sst compare TASK [flags]      methods x seeds side by side: results.json + report
    sst ablate TASK [flags]       the paper's SST ablation on one task: ablation.json + report
    sst report DIR                re-render a report from the result files in DIR
    sst demo                      MLP on scikit-learn's digits: full rank vs SST (images task)
    sst info | sst models | sst methods | sst tasks

Each command applies ``--threads`` itself (the parser has no side effects).
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path
from typing import Any

import torch

from .._util.checks import is_int
from .._version import __version__
from .flags import settings_from_args

DEFAULT_SEEDS = {"graph": [1234, 1235, 1236]}


def apply_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; None leaves torch's default.

    Raises:
        ValueError: not an int >= 1 (from a config file: ``threads = "4"`` or ``2.5``).
    """
    if threads is not None:
        if not is_int(threads) or threads < 1:
            raise ValueError(f"threads={threads!r} must be an int >= 1 (torch CPU threads)")
        torch.set_num_threads(threads)


def names_list(value, flag: str) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{flag}={value!r} must be comma-separated names or a list of names")


def int_list(value, flag: str) -> list[int]:
    """``"1,2,3"`` (or a list from a config file) -> ``[1, 2, 3]``; empty -> ``[]``."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        if all(is_int(v) for v in value):
            return list(value)
    elif isinstance(value, str):
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if all(p.lstrip("+-").isdigit() for p in parts):
            return [int(p) for p in parts]
    elif is_int(value):
        return [value]
    raise ValueError(f"{flag}={value!r} must be comma-separated integers or a list of "
                     "integers")


def lr_table(value, flag: str = "method_lr") -> dict[str, float]:
    """``"sst=3e-3,lora=2e-3"`` (or a mapping from a config file) -> ``{name: lr}``."""
    if not value:
        return {}
    if isinstance(value, dict):
        pairs = {str(k): v for k, v in value.items()}
    elif isinstance(value, str):
        pairs = {}
        for item in value.split(","):
            name, sep, number = item.partition("=")
            if not sep:
                raise ValueError(f"{flag} item {item!r} must look like name=lr (e.g. sst=3e-3)")
            try:
                pairs[name.strip()] = float(number)
            except ValueError:
                raise ValueError(f"{flag} item {item!r}: {number!r} is not a number") from None
    else:
        raise ValueError(f"{flag}={value!r} must look like sst=3e-3,lora=2e-3 or be a mapping "
                         "of names to learning rates")
    for name, lr in pairs.items():
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
                or lr <= 0:
            raise ValueError(f"{flag}: {name}={lr!r} must be a learning rate > 0")
    return pairs


# ---------------------------------------------------------------------- train / compare
def cmd_train(args: argparse.Namespace) -> int:
    from ..tasks.registry import get_task
    from ..training.distributed import is_main
    from ..training.runner import check_choices, train_run

    task = get_task(args.task_name)
    settings, command, _ = settings_from_args(
        args, task.settings_class,
        check=lambda s, c, explicit: check_choices(task, s, [s.method.name], explicit))
    apply_threads(command.get("threads"))
    outcome = train_run(task, settings, resume=args.resume, progress=not args.no_progress)
    summary = outcome.summary
    if not is_main():  # under torchrun: rank 0 reports
        return 0
    print(f"{settings.method.name}: {task.summary_line(summary)}; trainable "
          f"{summary['trainable_params']:,d} of {summary['total_params']:,d}; run folder "
          f"{settings.output.output_dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..report import render
    from ..tasks.registry import get_task
    from ..training.compare import run_compare
    from ..training.distributed import is_main
    from ..training.runner import check_choices

    task = get_task(args.task_name)

    def methods_of(command):
        return names_list(command.get("methods") or list(task.default_methods), "methods")

    settings, command, _ = settings_from_args(
        args, task.settings_class,
        check=lambda s, c, explicit: check_choices(task, s, methods_of(c), explicit))
    apply_threads(command.get("threads"))
    methods = methods_of(command)
    seeds = int_list(command.get("seeds"), "seeds") or DEFAULT_SEEDS.get(task.name)
    run_compare(task, settings, methods, seeds=seeds,
                method_lr=lr_table(command.get("method_lr")), progress=not args.no_progress)
    if not is_main():  # under torchrun: rank 0 writes the report
        return 0
    render(settings.output.output_dir)
    print((Path(settings.output.output_dir) / "report.md").read_text())
    return 0


# ---------------------------------------------------------------------- ablate
ABLATE_KEYS = ("variants", "iteration_intervals", "iterations_per_round", "variant_lr",
               "threads")


def cmd_ablate(args: argparse.Namespace) -> int:
    from ..experiments.ablation import (
        default_variants,
        run_ablation,
        select_variants,
        variant_runs,
    )
    from ..report import render
    from ..tasks.registry import get_task
    from ..training.distributed import is_main

    task = get_task(args.task_name)
    config = _ablation_config(args)

    def plan(command):
        """``(command values, variants, variant_lr)``: the config's, then the flags'."""
        command = {**{k: config[k] for k in ABLATE_KEYS if k in config}, **command}
        variants = select_variants(
            default_variants(int_list(command.get("iteration_intervals"),
                                      "iteration_intervals"),
                             int_list(command.get("iterations_per_round"),
                                      "iterations_per_round")),
            names_list(command["variants"], "variants") if command.get("variants") else None)
        return command, variants, lr_table(command.get("variant_lr"), "variant_lr")

    def check(settings, command, explicit):  # every variant's settings, before any trains
        _, variants, variant_lr = plan(command)
        variant_runs(task, settings, variants, ".", variant_lr)

    settings, command, _ = settings_from_args(args, task.settings_class, ABLATE_KEYS,
                                              config=config.get("settings", {}), check=check)
    command, variants, variant_lr = plan(command)
    apply_threads(command.get("threads"))
    output_dir = settings.output.output_dir
    if output_dir == task.settings_class().output.output_dir:  # not chosen: ablation's own
        output_dir = config.get("output_dir", f"runs/ablate_{task.name}")
    run_ablation(task, settings, variants, output_dir, progress=not args.no_progress,
                 variant_lr=variant_lr)
    if not is_main():  # under torchrun: rank 0 writes the report
        return 0
    render(output_dir)
    print((Path(output_dir) / "ablation.md").read_text())
    return 0


def _ablation_config(args: argparse.Namespace) -> dict[str, Any]:
    """An ablation ``--config``: its ``[settings]`` become the task's, the rest steer it."""
    if not args.config:
        return {}
    from .flags import load_config_file

    config = load_config_file(args.config)
    allowed = {"settings", *ABLATE_KEYS, "output_dir"}
    unknown = sorted(set(config) - allowed, key=str)
    if unknown:
        raise ValueError(f"--config {args.config}: unknown top-level key(s) {unknown}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    if not isinstance(config.get("settings", {}), dict):
        raise ValueError(f"--config {args.config}: settings must be a section ([settings]) of "
                         f"the task's settings, not {config['settings']!r}")
    if not isinstance(config.get("output_dir", ""), str):
        raise ValueError(f"--config {args.config}: output_dir={config['output_dir']!r} must "
                         "be a folder name")
    return config


# ---------------------------------------------------------------------- the rest
def cmd_report(args: argparse.Namespace) -> int:
    from ..report import render

    for path in render(args.directory).values():
        print(path)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"sparse-spectral {__version__}")
    print(f"python          {platform.python_version()}")
    print(f"torch           {torch.__version__}")
    print(f"threads         {torch.get_num_threads()}")
    print(f"device          {device}")
    print(f"cuda available  {cuda}")
    from ..training.device import PRECISIONS, describe, resolve_device

    print(f"--device auto   {describe(resolve_device('auto'))}")
    print(f"precisions      {', '.join(PRECISIONS)} (--precision; bf16 on CUDA needs bf16 "
          "support)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import describe_presets

    print(describe_presets())
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from ..tasks.registry import available_tasks, get_task

    for name in available_tasks():
        task = get_task(name)
        print(f"{name:8s} {task.description} (default methods: "
              f"{', '.join(task.default_methods)})")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import available_methods, method_config_class

    for name in available_methods():
        config = method_config_class(name)
        print(f"{name:18s} {(config.__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``sst compare images`` on digits with small demo settings; prints one table."""
    from ..tasks.images import IMAGES, ImagesSettings
    from ..training.compare import run_compare
    from ..training.config import MethodChoice, OptimSettings, OutputSettings, ScheduleSettings

    apply_threads(args.threads)
    methods = names_list(args.methods, "methods")
    settings = ImagesSettings(
        dataset="digits", hidden=[args.width, args.width], batch_size=64, seed=args.seed,
        method=MethodChoice(rank=args.rank, interval=args.iteration_interval),
        # As a plain AdamW loop: constant learning rate, no clipping.
        optim=OptimSettings(lr=args.lr, grad_clip=0.0),
        schedule=ScheduleSettings(epochs=float(args.epochs), warmup_steps=0, min_lr_ratio=1.0),
        output=OutputSettings(output_dir=args.output_dir))
    print(f"Digits MLP (width {args.width}), {args.epochs} epochs, rank {args.rank}, "
          f"T3 = {args.iteration_interval}, seed {args.seed}")
    results = run_compare(IMAGES, settings, methods,
                          method_lr={m: args.lr_sst for m in methods if m.startswith("sst")},
                          progress=False)
    print()
    print("| method | trainable params | share | val accuracy | test accuracy | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in results["methods"].items():
        print(f"| {name} | {r['trainable_params']:,d} | "
              f"{100 * r['trainable_params'] / r['total_params']:.1f}% | "
              f"{r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['wall_time_s']:.1f} |")
    return 0
