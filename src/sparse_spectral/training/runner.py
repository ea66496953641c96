"""One run of any task: build, convert, train with the one loop, evaluate, write the summary.

``train_run(task, settings)`` is what ``sst train TASK`` does and what ``sst compare`` and
``sst ablate`` repeat per method, seed and variant. It writes::

    <output_dir>/metrics.jsonl    one JSON line per log / evaluation
    <output_dir>/checkpoints/     step_XXXXXX/ directories + ``latest``
    <output_dir>/summary.json     final figures (written atomically at the end)

``task`` follows :class:`sparse_spectral.tasks.base.Task` (duck-typed: the engine does not
import tasks).

Under ``torchrun`` the run is data-parallel (:mod:`.distributed`): every rank builds the
same model and data, trains its share of each global batch, and rank 0 alone writes the
run folder (the other ranks' summaries are returned, not written). With
``--parallel fsdp2`` the converted model is sharded (:func:`.fsdp.shard_model`) before the
loop builds the optimizer over it; the returned ``RunOutcome.model`` is the sharded one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util.atomic import atomic_write_json, json_safe
from .._util.seeding import seed_global_rngs
from ..accounting import count_parameters
from ..methods import (
    available_methods,
    method_config_class,
    method_config_fields,
    method_for_run,
)
from .checkpoint import (
    check_model_file,
    check_world_size,
    read_checkpoint_state,
    resumable_checkpoint,
)
from .compile import check_compile, compile_model, compiled_graphs
from .device import (
    autocast,
    check_precision,
    describe,
    input_dtype,
    parameter_dtype,
    resolve_device,
)
from .distributed import World, check_rows, setup
from .fsdp import UNSUPPORTED, shard_model
from .loggers import JsonlLogger, MultiLogger, NullLogger, TensorBoardLogger
from .loop import LoopSettings, train
from .resume import check_resume_settings
from .runfolder import check_request, claim, writing


@dataclass
class RunOutcome:
    """A finished run: its summary and what stays in memory (for compare's extras)."""

    summary: dict[str, Any]
    model: nn.Module
    method: Any
    result: Any  # the loop's TrainResult (its ``evaluator`` is the task's eval_fn)


def build_method(task, settings, model: nn.Module):
    """The method of ``settings.method``, built for this run (rank, seed, interval, targets).

    Every option must be one of the method's (``sst compare`` and ``sst ablate`` give each
    run only the shared options its method takes, see :func:`with_run`); the task's default
    targets yield to the choice's.

    Raises:
        ValueError: an option the method does not have, or a bad value.
    """
    choice = settings.method
    fields = method_config_fields(choice.name)
    _check_options_apply(choice.name, choice.options)
    options = dict(choice.options)
    targets = task.default_targets(settings, model)
    for key in ("target_modules", "exclude_modules"):
        value = getattr(choice, key)
        if value is not None:
            targets[key] = value
    targets = {k: v for k, v in targets.items() if k not in options and k in fields}
    return method_for_run(choice.name, rank=choice.rank, seed=settings.seed,
                          interval=choice.interval, **targets, **options)


def _check_options_apply(name: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - method_config_fields(name))
    if unknown:
        raise ValueError(f"method option(s) {unknown} do not apply to {name}; its options: "
                         f"{', '.join(sorted(method_config_fields(name)))}")


def method_options_for(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The shared ``options`` of a comparison or ablation that method ``name`` takes."""
    fields = method_config_fields(name)
    return {k: v for k, v in options.items() if k in fields}


def check_choices(task, settings, methods: list[str],
                  explicit: set[str] | None = None) -> None:
    """Refuse a method choice that applies to none of ``methods`` (never ignore it silently),
    and a value a method's config refuses, before any run starts.

    A rank or interval given explicitly (``explicit``: the CLI knows which flags were
    given; None: those that differ from the task's default), or a method option, must be a
    setting of at least one of the methods run. Then each method's config is built from
    the run's choices and the options it takes (no model: its range and choice checks).

    Raises:
        ValueError: naming the setting, the methods run and the methods that take it; or
            the method config's error for a bad value (``lam=2.0 must be ...``).
    """
    unknown = [m for m in methods if m not in available_methods()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: "
                         f"{', '.join(available_methods())}")
    if not methods:
        raise ValueError("at least one method must be given (e.g. --methods full,sst)")
    chosen = settings.method
    if explicit is None:
        default = task.settings_class().method
        explicit = {key for key in ("rank", "interval")
                    if getattr(chosen, key) != getattr(default, key)}
    flags = {"rank": "--rank", "interval": "--iteration_interval"}
    for key in ("rank", "interval"):
        if key in explicit and not any(_takes(m, key) for m in methods):
            raise ValueError(f"{flags[key]} {getattr(chosen, key)} does not apply to "
                             f"{', '.join(methods)}: no such setting (methods that take it: "
                             f"{', '.join(_takers(key))})")
    for option in chosen.options:
        if not any(option in method_config_fields(m) for m in methods):
            takers = [m for m in available_methods() if option in method_config_fields(m)]
            raise ValueError(f"method option {option!r} does not apply to {', '.join(methods)}"
                             f" (methods that take it: {', '.join(takers) or 'none'})")
    for name in methods:
        targets = {k: getattr(chosen, k) for k in ("target_modules", "exclude_modules")
                   if getattr(chosen, k) is not None}
        options = method_options_for(name, chosen.options)
        method_for_run(name, rank=chosen.rank, seed=settings.seed, interval=chosen.interval,
                       **{k: v for k, v in targets.items() if k not in options}, **options)


def _takes(method: str, choice: str) -> bool:
    """Whether ``method`` uses the run choice ``rank`` or ``interval`` (a refresh interval)."""
    if choice == "interval":
        return method_config_class(method).refresh_interval_field is not None
    return choice in method_config_fields(method)


def _takers(choice: str) -> list[str]:
    return [m for m in available_methods() if _takes(m, choice)]


def check_runtime(settings) -> torch.device:
    """The run's device, with its precision and compile backend checked (before anything is
    written).

    Raises:
        ValueError: an unknown device or precision, CUDA where there is none, a precision
            the device cannot run, or a compile backend that is unknown or fails here.
    """
    runtime = settings.runtime
    device = resolve_device(runtime.device)
    check_precision(runtime.precision, device)
    check_compile(runtime.compile, runtime.compile_backend, device)
    return device


def loop_settings(settings, steps: int, grad_accumulation: int = 1, lr: float | None = None,
                  warmup_steps: int | None = None) -> LoopSettings:
    """The loop's settings from a task's composed settings."""
    s = settings
    return LoopSettings(
        num_training_steps=steps, lr=s.optim.lr if lr is None else lr,
        weight_decay=s.optim.weight_decay, grad_clip=s.optim.grad_clip,
        warmup_steps=s.schedule.warmup_steps if warmup_steps is None else warmup_steps,
        # Sections without these fields (MT's schedule, graph's evaluation) take the loop's.
        min_lr_ratio=getattr(s.schedule, "min_lr_ratio", LoopSettings.min_lr_ratio),
        grad_accumulation=grad_accumulation, eval_every=s.eval.eval_every,
        save_every=s.output.save_every,
        log_every=getattr(s.eval, "log_every", LoopSettings.log_every),
        divergence_factor=getattr(s.optim, "divergence_factor", LoopSettings.divergence_factor))


def train_run(task, settings, *, data=None, resume: bool = False,
              progress: bool = True) -> RunOutcome:
    """Train ``settings.method`` on ``task``; write the run folder; return the outcome.

    Under torchrun (or in an initialised process group) every rank calls this; all checks
    (world size against the batch, a resumed checkpoint's world size and settings, the run
    folder's state) run on every rank before anything is written, so a bad launch fails on
    every rank alike.

    The run folder (:mod:`.runfolder`): a new run refuses a folder holding another run
    unless ``settings.output.overwrite``; ``resume`` continues the newest intact checkpoint
    (:func:`.checkpoint.resumable_checkpoint`) if its recorded settings allow
    (:func:`.resume.check_resume_settings`); the folder is locked while the run writes it.
    """
    world, device = setup(check_runtime(settings), settings.runtime.parallel,
                          settings.runtime.dist_timeout_s)
    task.check(settings)
    run_dir = Path(settings.output.output_dir)
    overwrite = bool(getattr(settings.output, "overwrite", False))
    check_request(run_dir, resume=resume, overwrite=overwrite, world=world)
    if world is not None and world.sharded:
        check_fsdp2(settings)
    data = task.to_device(data if data is not None else task.prepare_data(settings), device,
                          input_dtype(settings.runtime.precision))
    batches = task.batches(settings, data)
    if world is not None:
        check_rows(batches.rows, world, task.name, batches.min_rows)
    loop = task.loop_settings(settings, batches)
    point = _resume_point(run_dir, resume, world, settings)
    main = world is None or world.is_main
    model, method = _converted_model(task, settings, data, device)
    graphs_before = compiled_graphs() if settings.runtime.compile else 0
    if settings.runtime.compile:  # in place: the same object and state_dict keys
        model = compile_model(model, settings.runtime.compile_backend)
    trainable, total = count_parameters(model)
    if point is not None and not (world is not None and world.sharded):
        check_model_file(point.path, model)  # a changed shape: refused before any write
    if world is not None and world.sharded:  # before the optimizer: it must hold the shards
        shard_model(model, method)
    with claim(run_dir, resume=resume, overwrite=overwrite, world=world):
        logger = _logger(settings, run_dir, point, main)
        # Dropout and every other draw from the global generators follow --seed; a resumed
        # run restores the generator state from its checkpoint. Every rank seeds the same
        # stream: a checkpoint holds rank 0's generator state only, so per-rank streams
        # would make a resumed DDP run with dropout differ from an uninterrupted one.
        seed_global_rngs(settings.seed)
        began = time.perf_counter()
        try:
            result = train(
                model, method, batch_fn=batches.batch_fn, loss_fn=task.loss(settings, data),
                eval_fn=task.evaluator(settings, data), settings=loop, run_dir=run_dir,
                logger=logger, checkpoint_settings=asdict(settings),
                resume=point.path if point else False,
                resume_record={"changed": point.changes} if point else None,
                tokens_per_step=batches.tokens_per_step, progress=progress,
                lr_lambda=task.lr_lambda(settings, method, batches.steps),
                build_optimizer=task.optimizer_builder(settings), batch_state=batches.state,
                device=device, precision=settings.runtime.precision, world=world,
                shard=batches.shard)
        finally:
            logger.close()
        summary = {
            "task": task.name, "method": settings.method.name, "settings": asdict(settings),
            "trainable_params": trainable, "total_params": total,
            "grad_optimizer_bytes": result.grad_optimizer_bytes,
            "step_time_s": result.median_step_time, "final_step": result.final_step,
            "num_training_steps": batches.steps, **(batches.info or {}),
            # The whole run's, resumed or not (checkpointed history: .resume.RunHistory).
            "curve": [dict(e) for e in result.evaluations],
        }
        if result.resumes:
            summary["resumes"] = [dict(r) for r in result.resumes]
        if settings.runtime.precision == "fp16-mixed":
            summary["skipped_steps"] = result.skipped_steps  # by the loss scaler, whole run
        with autocast(settings.runtime.precision, device):  # final figures as it trained
            summary.update(task.finish(settings, data, model, method, result, batches))
        summary["wall_time_s"] = time.perf_counter() - began
        if settings.runtime.compile:  # train, evaluation and final figures together
            summary["compiled_graphs"] = compiled_graphs() - graphs_before
        summary["device"] = describe(device)
        summary["world_size"] = world.size if world else 1
        summary["headline"] = task.headline(settings).to_dict()
        if main:  # strict JSON: a NaN figure is written as "nan", as in the metrics log
            with writing(run_dir / "summary.json", "the summary"):
                atomic_write_json(run_dir / "summary.json", json_safe(summary))
    return RunOutcome(summary, model, method, result)


def _logger(settings, run_dir: Path, point, main: bool):
    """Rank 0's metrics log (trimmed to a resume's checkpoint) and TensorBoard; a
    ``NullLogger`` elsewhere."""
    if not main:
        return NullLogger()
    loggers = [JsonlLogger(run_dir / "metrics.jsonl", resume_step=point.step if point else None)]
    if settings.output.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return MultiLogger(*loggers)


def unsharded(task, settings, data, outcome: RunOutcome) -> RunOutcome | None:
    """Rank 0: ``outcome`` with a one-process copy of its FSDP2-sharded model (for figures
    that read whole weights, e.g. ``sst compare``'s spectra); other ranks: None.

    Collective (the full state is gathered to rank 0's CPU, then moved to the model's
    device): every rank calls it. Rank 0 then holds the whole model once more.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(outcome.model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    model, method = _converted_model(task, settings, data,
                                     next(outcome.model.parameters()).device)
    model.load_state_dict(state)
    method.load_state_dict(outcome.method.state_dict())
    return dataclasses.replace(outcome, model=model, method=method)


def _converted_model(task, settings, data, device: torch.device):
    """The task's model, converted by the run's method, on ``device`` in the run's dtype."""
    model = task.build_model(settings, data)
    method = build_method(task, settings, model)
    # Decompose on the CPU as always (the same factors everywhere), then move (and for
    # pure bf16 cast: only then, so that fp32 runs keep any float64 buffer they have).
    model = method.prepare(model).to(device)
    if settings.runtime.precision == "bf16":
        model = model.to(parameter_dtype("bf16"))
    return model, method


@dataclass
class ResumePoint:
    """Where a resumed run continues: the checkpoint, its step, the settings it changes."""

    path: Path
    step: int
    changes: dict[str, list[Any]]


def _resume_point(run_dir: Path, resume: bool, world: World | None,
                  settings) -> ResumePoint | None:
    """The checkpoint a resumed run continues from (None: a fresh run), with its world size
    and recorded settings checked against this run's (every rank, nothing written).

    Raises:
        FileNotFoundError: ``resume`` and the folder has no checkpoint.
        CheckpointError: it has checkpoints, none intact.
        ValueError: another world size or parallel mode, or a setting a resume may not
            change.
    """
    if not resume:
        return None
    path = resumable_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"--resume: {run_dir} has no checkpoint to resume from")
    state = read_checkpoint_state(path)
    check_world_size(state, world.size if world else 1, path,
                     world.parallel if world else "ddp")
    step = int(state["step"])
    changes = check_resume_settings(state.get("settings") or {}, asdict(settings), step, path)
    return ResumePoint(path, step, {k: [old, new] for k, (old, new) in changes.items()})


def check_fsdp2(settings) -> None:
    """Refuse what ``--parallel fsdp2`` cannot run (on every rank, before anything is
    written).

    Raises:
        ValueError: a method FSDP2 does not support (GaLore, APOLLO), or ``compile`` (not verified
            with sharded parameters).
    """
    name = settings.method.name
    if name in UNSUPPORTED:
        raise ValueError(f"method {name!r} cannot run with --parallel fsdp2: "
                         f"{UNSUPPORTED[name]}")
    if settings.runtime.compile:
        raise ValueError("--compile is not supported with --parallel fsdp2 yet (compiling "
                         "the sharded model is untested); drop --compile or use ddp")


def with_run(settings, **changes):
    """A copy of ``settings`` for one run.

    Args:
        changes: ``method`` (name), ``options``, ``interval``, ``lr``, ``output_dir``, or
            top-level fields (``seed``). With ``method``, only the options (given or the
            settings') that the method takes are kept: shared options of a comparison.
    """
    method = settings.method
    optim, output = settings.optim, settings.output
    renames = {"method": "name", "options": "options", "interval": "interval"}
    chosen = {renames[k]: changes.pop(k) for k in list(changes) if k in renames}
    if "name" in chosen:  # a comparison's shared options: the ones this method takes
        chosen["options"] = method_options_for(chosen["name"],
                                               chosen.get("options", method.options))
    if chosen:
        method = dataclasses.replace(method, **chosen)
    if "lr" in changes:
        optim = dataclasses.replace(optim, lr=changes.pop("lr"))
    if "output_dir" in changes:
        output = dataclasses.replace(output, output_dir=str(changes.pop("output_dir")))
    return dataclasses.replace(settings, method=method, optim=optim, output=output, **changes)
