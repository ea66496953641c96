"""The ``sst`` command: the parser and the entry point.

    sst --version
    sst info | models | methods | tasks
    sst train TASK  [--config FILE] [--set KEY=VALUE] [flags]     TASK: lm, mt, graph, images
    sst compare TASK --methods full,lora,relora,galore,apollo,sst --seeds 0,1,2 [flags]
    sst ablate TASK --config examples/ablate_TASK_cpu.toml
    sst report DIR
    sst demo

Every task's flags are generated from its settings dataclass (cli/flags.py); settings come
from the dataclass defaults, then a ``--config`` file (TOML or YAML), then ``--set``, then
the flags, in that order of precedence.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from .._version import __version__
from .commands import (
    cmd_ablate,
    cmd_compare,
    cmd_demo,
    cmd_info,
    cmd_methods,
    cmd_models,
    cmd_report,
    cmd_tasks,
    cmd_train,
)
from .flags import add_common_flags, add_method_option_flags, add_settings_flags


class Parser(argparse.ArgumentParser):
    """argparse with the one error format of the command: ``sst: error: ...``, exit 2 (one
    line, pointing to ``--help`` rather than printing the long usage)."""

    def error(self, message: str):
        self.exit(2, f"sst: error: {message} (see {self.prog} --help)\n")


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # Given before or after the sub-command; a sub-parser's default must not reset it.
    parser.add_argument("--debug", action="store_true",
                        default=False if top else argparse.SUPPRESS,
                        help="on an error, show the Python traceback too")


def _add_task_parsers(sub, command: str, help_text: str, func) -> None:
    from ..tasks.registry import available_tasks, get_task

    parser = sub.add_parser(command, help=help_text)
    tasks = parser.add_subparsers(dest="task_name", required=True, metavar="TASK")
    for name in available_tasks():
        task = get_task(name)
        p = tasks.add_parser(name, help=f"{task.description}: {help_text}",
                             description=f"{task.description}: {help_text}")
        add_common_flags(p)
        _add_debug_flag(p)
        if command == "train":
            p.add_argument("--resume", action="store_true",
                           help="continue from the latest checkpoint in --output_dir")
        if command == "compare":
            p.add_argument("--methods", default=None,
                           help=f"comma-separated (default {','.join(task.default_methods)})")
            p.add_argument("--seeds", default=None,
                           help="comma-separated seeds; figures are means +- std over seeds "
                                "(default: --seed)")
            p.add_argument("--method_lr", default=None,
                           help="per-method learning rates, e.g. sst=3e-3,lora=2e-3")
        if command == "ablate":
            p.add_argument("--variants", default=None,
                           help="comma-separated variant labels (default: all), e.g. "
                                "sst,sst-uniform,full,relora")
            p.add_argument("--iteration_intervals", default=None,
                           help="extra T3 values, comma-separated (variants 'sst T3=N')")
            p.add_argument("--iterations_per_round", default=None,
                           help="extra T2 values, comma-separated (variants 'sst T2=N')")
            p.add_argument("--variant_lr", default=None,
                           help="learning rates by variant label or method, e.g. "
                                "full=1e-3,relora=1e-2 (others use the settings' lr)")
        add_settings_flags(p, task.settings_class)
        add_method_option_flags(p, skip=("iterations_per_round",) if command == "ablate"
                                else ())
        if name == "lm" and command == "compare":
            p.add_argument("--no_pruning", dest="pruning", action="store_false",
                           default=argparse.SUPPRESS, help="skip the pruning curve")
        p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sst", description="Sparse Spectral Training")
    parser.add_argument("--version", action="version", version=f"sparse-spectral {__version__}")
    _add_debug_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, func, text in (("info", cmd_info, "print versions, threads and device"),
                             ("models", cmd_models, "list the model presets"),
                             ("methods", cmd_methods, "list the training methods"),
                             ("tasks", cmd_tasks, "list the tasks")):
        plain = sub.add_parser(name, help=text)
        _add_debug_flag(plain)
        plain.set_defaults(func=func)
    report = sub.add_parser("report", help="re-render a report from the result files in DIR "
                                           "(a comparison, an ablation or one run folder)")
    _add_debug_flag(report)
    report.add_argument("directory")
    report.set_defaults(func=cmd_report)
    _add_task_parsers(sub, "train", "train one method", cmd_train)
    _add_task_parsers(sub, "compare", "train several methods side by side",
                      cmd_compare)
    _add_task_parsers(sub, "ablate", "the paper's SST ablation", cmd_ablate)
    demo = sub.add_parser("demo", help="train an MLP on sklearn digits: full rank vs SST")
    demo.add_argument("--methods", default="full,sst", help="comma-separated method names")
    demo.add_argument("--rank", type=int, default=8, help="rank of every low-rank method")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--width", type=int, default=256)
    demo.add_argument("--lr", type=float, default=1e-3, help="learning rate of full rank")
    demo.add_argument("--lr_sst", type=float, default=3e-3, help="learning rate of SST")
    demo.add_argument("--iteration_interval", type=int, default=20, help="SST's T3")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=None)
    demo.add_argument("--output_dir", default="runs/demo",
                      help="where the demo's runs go (replaced by each demo)")
    _add_debug_flag(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user's input or environment causes (documented in docs/reliability.md):
    bad settings or files (ValueError), files and folders (OSError: missing, unreadable,
    not writable), absent data sets, a diverged run."""
    from ..data.paths import DataUnavailableError
    from ..training.loop import TrainingDiverged

    return ValueError, OSError, DataUnavailableError, TrainingDiverged


def main(argv: list[str] | None = None) -> int:
    """Run the ``sst`` command; return its exit code.

    0: done. 2: a user error (``sst: error: ...`` on stderr, one line naming the file,
    field or value and what is allowed) or a usage error (argparse's). 1: an unexpected
    error, a bug (``sst: internal error: ...``). ``--debug`` adds the traceback to both.
    """
    args = build_parser().parse_args(argv)
    from ..training.distributed import teardown

    try:
        return args.func(args)
    except user_errors() as err:
        _report(err, "error", args.debug)
        return 2
    except Exception as err:  # a bug: say so on one line, the traceback on --debug
        _report(err, "internal error", args.debug,
                hint=" (a bug: please report it; rerun with --debug for the traceback)")
        return 1
    finally:
        teardown()  # under torchrun: leave the process group (every rank, also on errors)


def _report(err: BaseException, kind: str, debug: bool, hint: str = "") -> None:
    if debug:
        traceback.print_exception(err, file=sys.stderr)
    text = " ".join(str(err).split()) or type(err).__name__
    if kind != "error" or isinstance(err, OSError) and not isinstance(err, FileNotFoundError):
        text = f"{type(err).__name__}: {text}"
    print(f"sst: {kind}: {text}{hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
