"""The ``sst`` command.

    sst --version
    sst info                          torch version, threads, device
    sst models                        the model presets
    sst train lm --method sst --rank 16 --model gpt_cpu ...
    sst compare lm --methods full,lora,relora,galore,sst --rank 16 ...
    sst train mt --method sst --d_model 64 --rank 8 --data-dir DIR ...
    sst compare mt --model euclidean --d_model 64 --rank 8 --data-dir DIR ...
    sst train graph --dataset cora --task nc --method sst --rank 2 ...
    sst compare graph --dataset disease --task lp --rank 2 --seeds 1234,1235,1236 ...
    sst report DIR                    re-render a comparison report from DIR/results.json
    sst train images / sst compare images / sst ablate TASK   (see cli_images.py)
    sst demo                          MLP on scikit-learn's digits, full rank vs SST

Settings come from the dataclass defaults, then a ``--config`` file (TOML or YAML), then the
flags given on the command line, in that order of precedence.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from ._version import __version__

# Method options: flag -> method config field.
METHOD_OPTIONS = {
    "iteration_interval": int, "iterations_per_round": int, "sampler": str, "lam": float,
    "update_all_singular_values": "bool", "enhanced_gradient": "bool", "init": str,
    "svd_dtype": str, "alpha": float, "merge_interval": int, "optimizer_reset": str,
    "reset_ratio": float, "restart_warmup_steps": int, "update_proj_gap": int,
    "galore_scale": float, "proj_type": str, "forward_mode": str, "stagger_resvd": "bool",
}
_FIELD_OF_OPTION = {"galore_scale": "scale"}


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


# ---------------------------------------------------------------------- info / demo
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


def cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_presets

    print(describe_presets())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render

    written = render(args.directory)
    for path in written.values():
        print(path)
    return 0


# ---------------------------------------------------------------------- lm train / compare
def load_config_file(path: str) -> dict[str, Any]:
    """Settings from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file")
    if file.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        return tomllib.loads(file.read_text())
    if file.suffix in (".yaml", ".yml"):
        import yaml

        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path}: expected a mapping at the top level")
        return loaded
    raise ValueError(f"--config {path}: unknown format {file.suffix!r}; use .toml, .yaml or .yml")


def lm_settings_from_args(args: argparse.Namespace):
    """Merge defaults < config file < explicit flags into :class:`LMSettings`."""
    from .tasks.lm import LMSettings

    return settings_from_args(args, LMSettings)


def mt_settings_from_args(args: argparse.Namespace):
    """Merge defaults < config file < explicit flags into :class:`MTSettings`."""
    from .tasks.mt import MTSettings

    return settings_from_args(args, MTSettings)


#: Flags that steer a run rather than define it (returned apart from the settings).
RUN_EXTRAS = ("methods", "method_lr", "resume", "no_progress", "threads", "no_pruning")


def settings_from_args(args: argparse.Namespace, settings_class,
                       renames: dict[str, str] | None = None, more_extras: tuple[str, ...] = ()):
    """``(settings_class.from_dict(...), extras)``: defaults < config file < explicit flags.

    Args:
        args: parsed flags; absent flags are absent (``default=SUPPRESS``).
        settings_class: the task's settings dataclass.
        renames: flag destination -> settings field (e.g. ``graph_task`` -> ``task``).
        more_extras: keys returned in ``extras`` besides :data:`RUN_EXTRAS` (``seeds``).

    Method options given as flags go into ``method_options``; the extras come back apart.
    ``extras["threads"]``, when given, is applied here.
    """
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "task")}
    values: dict[str, Any] = {}
    config = given.pop("config", None)
    if config:
        values.update(load_config_file(config))
    values.update(given)
    for flag, name in (renames or {}).items():
        if flag in values:
            values[name] = values.pop(flag)
    method_options = dict(values.pop("method_options", {}) or {})
    for option in METHOD_OPTIONS:
        if option in values:
            method_options[_FIELD_OF_OPTION.get(option, option)] = values.pop(option)
    extras = {k: values.pop(k) for k in RUN_EXTRAS + tuple(more_extras) if k in values}
    settings = settings_class.from_dict({**values, "method_options": method_options})
    if extras.get("threads"):
        torch.set_num_threads(int(extras["threads"]))
    return settings, extras


def int_list(text: str | list | None, name: str) -> list[int]:
    """``"1,2,3"`` (or a list from a config file) -> ``[1, 2, 3]``; empty -> ``[]``."""
    if text is None or text == "":
        return []
    if isinstance(text, list):
        return [int(x) for x in text]
    try:
        return [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} {text!r} must be comma-separated integers") from None


def _parse_method_lr(text: str | dict | None) -> dict[str, float]:
    """``"sst=3e-3,lora=2e-3"`` (or a mapping from a config file) -> ``{name: lr}``.

    Raises:
        ValueError: an item without ``=``, or a name that is not a method.
    """
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = {k: float(v) for k, v in text.items()}
    else:
        pairs = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--method_lr item {item!r} must look like name=lr "
                                 f"(e.g. sst=3e-3)")
            pairs[name.strip()] = float(value)
    _check_method_names(list(pairs))
    return pairs


def _check_method_names(names: list[str]) -> None:
    from .methods import available_methods

    unknown = [n for n in names if n not in available_methods()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: "
                         f"{', '.join(available_methods())}")


def _check_preset(name: str) -> None:
    from .models import get_preset

    get_preset(name)  # raises, listing the presets, for an unknown name


def cmd_train_lm(args: argparse.Namespace) -> int:
    from .tasks.lm import run_train

    settings, extras = lm_settings_from_args(args)
    _check_method_names([settings.method])
    _check_preset(settings.model)
    summary = run_train(settings, resume=bool(extras.get("resume")),
                        progress=not extras.get("no_progress"))
    print(f"{settings.method}: val ppl {summary['val_ppl']:.3f}, test ppl "
          f"{summary['test_ppl']:.3f}, trainable {summary['trainable_params']:,d} of "
          f"{summary['total_params']:,d}; run folder {settings.output_dir}")
    return 0


def cmd_compare_lm(args: argparse.Namespace) -> int:
    from .tasks.lm import run_compare

    settings, extras = lm_settings_from_args(args)
    methods = _methods_list(extras, ("full", "lora", "relora", "galore", "sst"))
    _check_preset(settings.model)
    method_lr = _parse_method_lr(extras.get("method_lr"))
    run_compare(settings, methods, method_lr, progress=not extras.get("no_progress"),
                pruning=not extras.get("no_pruning"))
    print((Path(settings.output_dir) / "report.md").read_text())
    return 0


def _methods_list(extras: dict[str, Any], default: tuple[str, ...]) -> list[str]:
    methods = extras.get("methods") or list(default)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    _check_method_names(methods)
    return methods


# ---------------------------------------------------------------------- mt train / compare
def cmd_train_mt(args: argparse.Namespace) -> int:
    from .tasks.mt import run_train

    settings, extras = mt_settings_from_args(args)
    _check_method_names([settings.method])
    summary = run_train(settings, resume=bool(extras.get("resume")),
                        progress=not extras.get("no_progress"))
    print(f"{settings.method}: test BLEU {summary['test_bleu']:.2f} "
          f"({summary['bleu_signature']}), val ppl {summary['val_ppl']:.3f}, trainable "
          f"{summary['trainable_params']:,d} of {summary['total_params']:,d}; run folder "
          f"{settings.output_dir}")
    return 0


def cmd_compare_mt(args: argparse.Namespace) -> int:
    from .tasks.mt import DEFAULT_METHODS, run_compare

    settings, extras = mt_settings_from_args(args)
    methods = _methods_list(extras, DEFAULT_METHODS)
    method_lr = _parse_method_lr(extras.get("method_lr"))
    run_compare(settings, methods, method_lr, progress=not extras.get("no_progress"))
    print((Path(settings.output_dir) / "report.md").read_text())
    return 0


def _add_mt_arguments(parser: argparse.ArgumentParser, compare: bool) -> None:
    """Flags of ``sst train mt`` / ``sst compare mt``; defaults live in MTSettings."""
    S = argparse.SUPPRESS
    add = parser.add_argument
    add("--config", default=S, help="TOML or YAML file of settings (flags override it)")
    if compare:
        add("--methods", default=S, help="comma-separated (default full,lora,relora,sst)")
        add("--method_lr", default=S, help="per-method learning rates, e.g. sst=3e-3,lora=2e-3")
    else:
        add("--method", default=S, help="full, lora, relora, galore, sst or an SST variant")
        add("--resume", action="store_true", default=S,
            help="continue from the latest checkpoint in --output_dir")
    add("--rank", type=int, default=S)
    add("--model", default=S,
        help="euclidean (default) or hyperbolic (HyboNet's Lorentz Transformer)")
    add("--data-dir", "--data_dir", dest="data_dir", default=S,
        help="data directory holding multi30k/ (default $SST_DATA_DIR)")
    add("--source_lang", default=S, help="de (default) or en")
    add("--target_lang", default=S, help="en (default) or de")
    add("--vocab_size", type=int, default=S, help="joint BPE vocabulary size")
    add("--train_pairs", type=int, default=S, help="use only the first N training pairs")
    add("--eval_pairs", type=int, default=S,
        help="use only the first N validation and test pairs")
    add("--max_tokens", type=int, default=S, help="padded tokens per batch and side")
    add("--d_model", type=int, default=S)
    add("--num_heads", type=int, default=S)
    add("--num_layers", type=int, default=S, help="encoder layers = decoder layers")
    add("--d_ff", type=int, default=S, help="feed-forward width (default 4 * d_model)")
    add("--dropout", type=float, default=S,
        help="default: 0.1 (euclidean), 0.0 (hyperbolic, HyboNet's IWSLT run)")
    add("--attention_dropout", type=float, default=S,
        help="hyperbolic only: dropout on the Q/K/V inputs (default 0.1, HyboNet's)")
    add("--riemannian", default=S,
        help="hyperbolic only: Riemannian Adam of the manifold tables, hybonet (default) "
             "or geoopt")
    add("--tie_embeddings", type=_bool, default=S,
        help="share target embedding and output table (default: true for euclidean, false "
             "for hyperbolic as HyboNet)")
    add("--schedule", default=S, help="inverse_sqrt (lr = peak) or noam (lr = Noam factor)")
    add("--lr", type=float, default=S)
    add("--warmup_steps", type=int, default=S)
    add("--num_training_steps", type=int, default=S)
    add("--epochs", type=float, default=S, help="train this many epochs (overrides steps)")
    add("--grad_accumulation", type=int, default=S)
    add("--label_smoothing", type=float, default=S)
    add("--weight_decay", type=float, default=S)
    add("--grad_clip", type=float, default=S)
    add("--eval_every", type=int, default=S)
    add("--save_every", type=int, default=S)
    add("--seed", type=int, default=S)
    add("--beam_size", type=int, default=S, help="test decoding beam (1: greedy)")
    add("--length_penalty", type=float, default=S, help="GNMT length-penalty alpha")
    add("--max_len_a", type=float, default=S)
    add("--max_len_b", type=float, default=S)
    add("--decode_batch_size", type=int, default=S, help="sentences per decoding batch")
    add("--num_examples", type=int, default=S, help="test translations shown in the report")
    add("--output_dir", default=S)
    add("--tensorboard", action="store_true", default=S)
    add("--threads", type=int, default=S)
    add("--no_progress", action="store_true", default=S)
    group = parser.add_argument_group("method options (used by the methods that have them)")
    for option, kind in METHOD_OPTIONS.items():
        group.add_argument(f"--{option}", type=_bool if kind == "bool" else kind, default=S)


def _add_lm_arguments(parser: argparse.ArgumentParser, compare: bool) -> None:
    """Flags of ``sst train lm`` / ``sst compare lm``; defaults live in LMSettings."""
    S = argparse.SUPPRESS
    add = parser.add_argument
    add("--config", default=S, help="TOML or YAML file of settings (flags override it)")
    if compare:
        add("--methods", default=S, help="comma-separated (default full,lora,relora,galore,sst)")
        add("--method_lr", default=S, help="per-method learning rates, e.g. sst=3e-3,lora=2e-3")
        add("--no_pruning", action="store_true", default=S, help="skip the pruning curve")
    else:
        add("--method", default=S, help="full, lora, relora, galore, sst or an SST variant")
        add("--resume", action="store_true", default=S,
            help="continue from the latest checkpoint in --output_dir")
    add("--rank", type=int, default=S)
    add("--model", default=S, help="model preset (see `sst models`)")
    add("--corpus", default=S, help="shakespeare (default), tinyshakespeare or text")
    add("--text", default=S, help="a text file or folder to train on")
    add("--data-dir", "--data_dir", dest="data_dir", default=S,
        help="data directory (default $SST_DATA_DIR), e.g. for tinyshakespeare")
    add("--tokenizer", default=S, help="char or bpe")
    add("--vocab_size", type=int, default=S, help="BPE vocabulary size")
    add("--block_size", type=int, default=S)
    add("--dropout", type=float, default=S)
    add("--lr", type=float, default=S)
    add("--batch_size", type=int, default=S)
    add("--total_batch_size", type=int, default=S, help="sequences per step (accumulation)")
    add("--num_training_steps", type=int, default=S)
    add("--warmup_steps", type=int, default=S)
    add("--min_lr_ratio", type=float, default=S)
    add("--weight_decay", type=float, default=S)
    add("--grad_clip", type=float, default=S)
    add("--eval_every", type=int, default=S)
    add("--eval_tokens", type=int, default=S, help="validation tokens per periodic evaluation")
    add("--save_every", type=int, default=S)
    add("--seed", type=int, default=S)
    add("--output_dir", default=S)
    add("--tensorboard", action="store_true", default=S)
    add("--threads", type=int, default=S)
    add("--no_progress", action="store_true", default=S)
    group = parser.add_argument_group("method options (used by the methods that have them)")
    for option, kind in METHOD_OPTIONS.items():
        group.add_argument(f"--{option}", type=_bool if kind == "bool" else kind, default=S)


# ---------------------------------------------------------------------- graph train / compare
def graph_settings_from_args(args: argparse.Namespace):
    """Merge defaults < config file < explicit flags into :class:`GraphSettings`."""
    from .tasks.graph import GraphSettings

    # ``--task`` is stored as ``graph_task``: ``task`` is the sub-command's name.
    return settings_from_args(args, GraphSettings, renames={"graph_task": "task"},
                              more_extras=("seeds",))


def cmd_train_graph(args: argparse.Namespace) -> int:
    from .tasks.graph import REPORTED, run_train

    settings, extras = graph_settings_from_args(args)
    _check_method_names([settings.method])
    summary = run_train(settings, progress=not extras.get("no_progress"))
    shown = ", ".join(f"{k} {summary['test'][k]:.4f}" for k in REPORTED[settings.task])
    print(f"{settings.method}: best val epoch {summary['best_epoch']} of "
          f"{summary['epochs_run']}; test {shown}; trainable {summary['trainable_params']:,d} "
          f"of {summary['total_params']:,d}; run folder {settings.output_dir}")
    return 0


def cmd_compare_graph(args: argparse.Namespace) -> int:
    from .tasks.graph import run_compare

    settings, extras = graph_settings_from_args(args)
    methods = _methods_list(extras, ("full", "lora", "relora", "galore", "sst"))
    method_lr = _parse_method_lr(extras.get("method_lr"))
    seeds = int_list(extras.get("seeds", "1234,1235,1236"), "seeds")
    run_compare(settings, methods, seeds, method_lr, progress=not extras.get("no_progress"))
    print((Path(settings.output_dir) / "report.md").read_text())
    return 0


def _add_graph_arguments(parser: argparse.ArgumentParser, compare: bool) -> None:
    """Flags of ``sst train graph`` / ``sst compare graph``; defaults live in GraphSettings."""
    S = argparse.SUPPRESS
    add = parser.add_argument
    add("--config", default=S, help="TOML or YAML file of settings (flags override it)")
    if compare:
        add("--methods", default=S, help="comma-separated (default full,lora,relora,galore,sst)")
        add("--method_lr", default=S, help="per-method learning rates, e.g. sst=0.01")
        add("--seeds", default=S, help="comma-separated seeds (default 1234,1235,1236)")
    else:
        add("--method", default=S, help="full, lora, relora, galore, sst or an SST variant")
        add("--seed", type=int, default=S)
    add("--dataset", default=S, help="cora, citeseer, airport or disease")
    add("--task", dest="graph_task", default=S, help="nc (node classification) or lp (links)")
    add("--data-dir", "--data_dir", dest="data_dir", default=S,
        help="data directory (default $SST_DATA_DIR)")
    add("--split", default=S, help="corrected (default) or hgcn (HGCN/HyboNet's, quirks kept)")
    add("--split_seed", type=int, default=S)
    add("--rank", type=int, default=S)
    add("--dim", type=int, default=S)
    add("--riemannian", default=S, help="hybonet (default) or geoopt Riemannian Adam")
    help_default = "(default: HyboNet's value for the data set)"
    for name, kind in (("lr", float), ("num_layers", int), ("act", str), ("dropout", float),
                       ("weight_decay", float), ("margin", float), ("grad_clip", float)):
        add(f"--{name}", type=kind, default=S, help=help_default)
    for name, kind in (("epochs", int), ("min_epochs", int), ("patience", int),
                       ("eval_freq", int), ("lr_reduce_freq", int), ("gamma", float)):
        add(f"--{name}", type=kind, default=S)
    add("--output_dir", default=S)
    add("--threads", type=int, default=S)
    add("--no_progress", action="store_true", default=S)
    group = parser.add_argument_group("method options (used by the methods that have them)")
    for option, kind in METHOD_OPTIONS.items():
        group.add_argument(f"--{option}", type=_bool if kind == "bool" else kind, default=S)


def build_parser() -> argparse.ArgumentParser:
    from .cli_images import add_ablate_parser, add_images_task

    parser = argparse.ArgumentParser(prog="sst", description="Sparse Spectral Training")
    parser.add_argument("--version", action="version", version=f"sparse-spectral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="print versions, threads and device").set_defaults(func=cmd_info)
    sub.add_parser("models", help="list the model presets").set_defaults(func=cmd_models)

    report = sub.add_parser("report", help="re-render a comparison report from results.json")
    report.add_argument("directory")
    report.set_defaults(func=cmd_report)

    for command, compare, func, mt_func, text in (
            ("train", False, cmd_train_lm, cmd_train_mt, "train one method"),
            ("compare", True, cmd_compare_lm, cmd_compare_mt,
             "train several methods side by side")):
        tasks = sub.add_parser(command, help=text).add_subparsers(dest="task", required=True)
        add_images_task(tasks, compare)  # sst {train,compare} images (cli_images.py)
        lm = tasks.add_parser("lm", help=f"language-model pre-training: {text}")
        _add_lm_arguments(lm, compare)
        lm.set_defaults(func=func)
        mt = tasks.add_parser("mt", help=f"Multi30k translation: {text}")
        _add_mt_arguments(mt, compare)
        mt.set_defaults(func=mt_func)
        graph = tasks.add_parser("graph", help=f"hyperbolic graph models (HyboNet): {text}")
        _add_graph_arguments(graph, compare)
        graph.set_defaults(func=cmd_train_graph if not compare else cmd_compare_graph)

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
    add_ablate_parser(sub)  # sst ablate {lm,mt,graph,images} (cli_images.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data.paths import DataUnavailableError
    from .training.loop import TrainingDiverged

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, DataUnavailableError, TrainingDiverged) as err:
        print(f"sst: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

