"""The one training loop: every task, every method, through the method's life cycle.

Every batch is a pure function of the step (``batch_fn(step, micro)``, plus a checkpointed
``batch_state`` where a task draws from a stream, e.g. graph's negative sampler), the
methods sample from counter-seeded generators, and checkpoints hold the optimizer,
scheduler, method state, torch RNG, batch state and evaluation-hook state, so a resumed run
continues bit-exactly on CPU at the same thread count.

Full-batch training (graph) is a step with a constant batch; early stopping is an
evaluation hook: an ``eval_fn`` with ``after_eval(step, metrics, train) -> stop``.

``fp16-mixed`` (a gradient scaler, :func:`~.device.grad_scaler`): each micro-batch's loss
is scaled before backward, the gradients are unscaled before clipping (so ``grad_clip`` and
the logged ``grad_norm`` see true gradients), then ``scaler.step`` runs the optimizer only
if every gradient is finite, and ``scaler.update`` halves the scale after a skipped step.
A skipped step is a step of the run with a zero update: the LR scheduler and
``method.after_step(step, optimizer)`` still run, so the learning rate, the method's
schedule (SST's selections every T3 steps, its re-SVDs, ReLoRA*'s merges) and the data stay
on the steps an fp32 run uses. That is safe because nothing there assumes the parameters
moved: clamping and renormalising are no-ops up to rounding on unchanged parameters, and a
resample or re-SVD is valid at any parameters. The optimizer's own counters (SlotAdamW's
per-slot steps, GaLore's projection gap) count real updates only, and the method guard,
which hooks ``optimizer.step``, sees only those (``after_step`` still runs every step, so
it never reports a skip as a missed ``after_step``). The scaler's state is checkpointed.

Under DDP (``world``, :mod:`.distributed`) the loop trains ``DistributedDataParallel(model)``
on its rank's rows of every global micro-batch, with ``no_sync`` on all but the last one;
everything else (clipping, the optimizer, the method, evaluation, checkpoints) sees the
unwrapped ``model``, whose state is identical on every rank. Every rank evaluates the whole
evaluation set (no sharding: simple, and the figures are the single-process ones); the
logged ``train_loss`` is the mean over ranks; rank 0 alone logs, shows progress and saves.

Under FSDP2 (``world.sharded``) the model arrives already sharded (:func:`.fsdp.shard_model`,
so the optimizer built here holds the shards); the loop trains it directly, accumulates with
``set_requires_gradient_sync(False)`` on all but the last micro-batch, does not enter
:func:`replicated_ranks` (the methods' sharded state changes are collective by themselves),
and every rank takes part in saving and restoring checkpoints
(:func:`.checkpoint.save_sharded_checkpoint`).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util.collectives import replicated_ranks
from ..accounting import memory_report
from .checkpoint import (
    latest_checkpoint,
    restore_checkpoint,
    restore_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from .device import autocast, grad_scaler, input_dtype, move_to
from .distributed import World, gradient_sync, mean_across, shard_rows, wrap
from .loggers import MetricLogger
from .schedules import method_lr_lambda


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved for that step."""


@dataclass
class LoopSettings:
    """Optimisation settings (flag names follow the GaLore/ReLoRA scripts)."""

    num_training_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    eval_every: int = 100
    save_every: int = 0
    log_every: int = 10
    #: Evaluate after the last step even when ``eval_every`` does not divide it.
    evaluate_last: bool = True
    #: Print every n-th evaluation (graph evaluates every epoch).
    print_every_evals: int = 1

    def __post_init__(self):
        for name in ("num_training_steps", "grad_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("warmup_steps", "eval_every", "save_every", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.warmup_steps > self.num_training_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be <= "
                             f"num_training_steps={self.num_training_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.grad_clip is not None and not 0 <= self.grad_clip < math.inf:
            raise ValueError(f"grad_clip={self.grad_clip} must be >= 0 and finite (0 or "
                             "None: no clipping)")


@dataclass
class TrainResult:
    """What a finished run measured."""

    final_step: int
    step_times: list[float] = field(default_factory=list)
    grad_optimizer_bytes: int = 0
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    #: Steps whose update ``fp16-mixed``'s scaler skipped (inf/NaN gradients), this process.
    skipped_steps: int = 0
    evaluator: Any = None  # the eval_fn trained with (e.g. a task's early stopping)

    @property
    def median_step_time(self) -> float:
        return statistics.median(self.step_times) if self.step_times else float("nan")


def train(model: nn.Module, method, *,
          batch_fn: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
          loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
          eval_fn: Callable[[nn.Module], dict[str, float]],
          settings: LoopSettings, run_dir: str | Path, logger: MetricLogger,
          checkpoint_settings: dict[str, Any] | None = None, resume: bool = False,
          tokens_per_step: int = 0, progress: bool = True,
          lr_lambda: Callable[[int], float] | None = None,
          build_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
          batch_state: Any = None, device: torch.device | None = None,
          precision: str = "fp32", world: World | None = None,
          shard: Callable[[Any, Any, World], tuple[Any, Any]] | None = None) -> TrainResult:
    """Train ``model`` (already prepared by ``method``) for ``settings.num_training_steps``.

    Args:
        batch_fn: ``(step, micro_batch) -> (inputs, targets)``; must depend only on its
            arguments (that is what makes resume exact).
        loss_fn: ``(model, inputs, targets) -> scalar loss`` (mean over the micro-batch).
        eval_fn: ``model -> {"val_loss": ..., ...}``, called every ``eval_every`` steps and
            at the end, in eval mode under ``torch.no_grad``. If it also has
            ``after_eval(step, metrics, train) -> bool`` (``train``: that step's
            ``train_loss`` and ``grad_norm``), a True stops training after that step (early
            stopping); its ``state_dict``/``load_state_dict`` go into checkpoints.
        run_dir: checkpoints go to ``run_dir/checkpoints``.
        checkpoint_settings: JSON-able description of the run, stored in checkpoints.
        resume: continue from ``run_dir``'s latest checkpoint (error if there is none).
        tokens_per_step: for the tokens/s figure.
        lr_lambda: the ``LambdaLR`` multiplier; default ``method_lr_lambda(method,
            num_training_steps, warmup_steps, min_lr_ratio)`` (a task with its own schedule
            passes one).
        build_optimizer: ``(model, method, lr=..., weight_decay=...) -> Optimizer``; default
            ``method.build_optimizer(model, lr=..., weight_decay=...)``. A model with manifold
            parameters passes :func:`~..hyperbolic.optim.build_hyperbolic_optimizer` (the
            method's optimizer plus a Riemannian Adam, as one optimizer). The result is what
            checkpoints save and ``method.after_step`` receives.
        batch_state: an object with ``state_dict``/``load_state_dict`` that ``batch_fn`` or
            ``loss_fn`` draws from (checkpointed), or None.
        device: where the batches go (the model is already there); None: leave them.
        precision: ``fp32``, ``bf16-mixed`` (forward, loss and evaluation under bf16
            autocast on ``device``), ``bf16`` (the model's parameters are already bf16) or
            ``fp16-mixed`` (float16 autocast and a gradient scaler; module docstring).
        world: the DDP or FSDP2 world (:func:`.distributed.setup`; FSDP2: ``model``
            already sharded), or None for one process. Without ``shard``, each
            global micro-batch must have a multiple of ``world.size`` rows; ``logger``
            should be a real one on rank 0 only (this function writes nothing else on other
            ranks).
        shard: ``(inputs, targets, world) -> (inputs, targets)``, this rank's part of a
            global micro-batch (a task's ``Batches.shard``); None: :func:`.distributed.
            shard_rows`' even split by rows.

    Raises:
        TrainingDiverged: on a non-finite loss; the last good checkpoint stays the latest.
    """
    if build_optimizer is None:
        optimizer = method.build_optimizer(model, lr=settings.lr,
                                           weight_decay=settings.weight_decay)
    else:
        optimizer = build_optimizer(model, method, lr=settings.lr,
                                    weight_decay=settings.weight_decay)
    if lr_lambda is None:
        lr_lambda = method_lr_lambda(method, settings.num_training_steps,
                                     settings.warmup_steps, settings.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    config = checkpoint_settings if checkpoint_settings is not None else asdict(settings)
    amp_device, cast = device or torch.device("cpu"), input_dtype(precision)
    sharded = world is not None and world.sharded
    scaler = grad_scaler(precision, amp_device, sharded)
    stateful = {"batches": batch_state,
                "evaluation": eval_fn if hasattr(eval_fn, "state_dict") else None,
                "scaler": scaler}
    stateful = {key: obj for key, obj in stateful.items() if obj is not None}
    start = 0
    if resume:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"--resume: {run_dir} has no checkpoint to resume from")
        restore = restore_sharded_checkpoint if sharded else restore_checkpoint
        start = restore(path, model, optimizer, scheduler, method, stateful,
                        world_size=world.size if world else 1)
    main = world is None or world.is_main
    # After the restore: DDP's construction broadcasts rank 0's (identical) state.
    engine = model if world is None or sharded else wrap(model, amp_device)
    result = TrainResult(final_step=start, evaluator=eval_fn)
    bar = _progress_bar(settings.num_training_steps, start, progress) if main else _QuietBar()
    measured = False
    # The methods' rank collectives (SST's owner re-SVD and index broadcast, GaLore's
    # projection broadcast) run only while a replicated (DDP) model trains here.
    with replicated_ranks(world is not None and not sharded):
        for step in range(start + 1, settings.num_training_steps + 1):
            model.train()
            began = time.perf_counter()
            total_loss = 0.0
            for micro in range(settings.grad_accumulation):
                inputs, targets = batch_fn(step, micro)
                if world is not None:
                    inputs, targets = (shard(inputs, targets, world) if shard is not None
                                       else shard_rows((inputs, targets), world))
                if device is not None:
                    inputs, targets = move_to(inputs, device, cast), move_to(targets, device, cast)
                last_micro = micro == settings.grad_accumulation - 1
                with gradient_sync(engine, world, last_micro):
                    with autocast(precision, amp_device):
                        loss = loss_fn(engine, inputs, targets) / settings.grad_accumulation
                    (loss if scaler is None else scaler.scale(loss)).backward()
                total_loss += loss.item()
            if world is not None:  # every rank then sees the same loss (and stops on the same)
                total_loss = mean_across(total_loss)
            if not math.isfinite(total_loss):
                optimizer.zero_grad(set_to_none=True)
                last = latest_checkpoint(run_dir)
                raise TrainingDiverged(
                    f"non-finite loss ({total_loss}) at step {step}; stopped without saving. "
                    f"Last good checkpoint: {last if last else 'none'}")
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip (and log) the true gradients
            grad_norm = _clip(model, settings.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            skipped = _optimizer_step(optimizer, scaler)
            result.skipped_steps += skipped
            if not measured and not skipped:  # after the first real update: moments exist
                measured = True
                report = memory_report(model, optimizer)
                result.grad_optimizer_bytes = report.gradients + report.optimizer_state
            with warnings.catch_warnings():
                # A skipped first step (fp16-mixed) makes LambdaLR warn that the optimizer did not
                # step; advancing the schedule anyway is deliberate (module docstring).
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step")
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            method.after_step(step, optimizer)
            elapsed = time.perf_counter() - began
            result.step_times.append(elapsed)
            result.final_step = step
            tokens_per_s = tokens_per_step / elapsed if elapsed > 0 else 0.0
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            if settings.log_every and (step % settings.log_every == 0 or step == start + 1):
                record = {"train_loss": total_loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens_per_s": tokens_per_s}
                if scaler is not None:
                    record.update(loss_scale=scaler.get_scale(), skipped_steps=result.skipped_steps)
                logger.log_dict(record, step)
            last = step == settings.num_training_steps
            if (settings.eval_every and step % settings.eval_every == 0) \
                    or (last and settings.evaluate_last):
                with autocast(precision, amp_device):
                    metrics = _evaluate(model, eval_fn)
                result.evaluations.append({"step": step, **metrics})
                logger.log_dict(metrics, step)
                if len(result.evaluations) % settings.print_every_evals == 0:
                    bar.write(f"step {step}: "
                              + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if hasattr(eval_fn, "after_eval"):
                    result.stopped_early = bool(eval_fn.after_eval(
                        step, metrics, {"train_loss": total_loss, "grad_norm": grad_norm}))
            saving = ((settings.save_every and step % settings.save_every == 0) or last
                      or result.stopped_early)
            extra = {key: obj.state_dict() for key, obj in stateful.items()} if saving else {}
            if saving and sharded:  # collective: every rank writes its shards
                save_sharded_checkpoint(run_dir, step, model, optimizer, scheduler, method,
                                        config, extra)
            elif saving and main:
                save_checkpoint(run_dir, step, model, optimizer, scheduler, method, config,
                                extra, world_size=world.size if world else 1)
            if result.stopped_early:
                break
    bar.close()
    return result


def _optimizer_step(optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None) -> bool:
    """Step (through ``scaler`` when given); return whether the scaler skipped the step.

    A skip is read off the scale, as accelerate does: ``update`` lowers it only after a
    step with inf/NaN gradients (growth never lowers it).
    """
    if scaler is None:
        optimizer.step()
        return False
    before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() < before


def _clip(model: nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm at ``max_norm`` (None or 0: no clip); return the norm.

    Without a limit the norm is measured by the same call with ``max_norm = inf``, so the
    logged norm is one definition whether or not a run clips (the scale factor is 1.0).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    limit = max_norm if max_norm and max_norm > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor (the global norm, reduced)
        norm = norm.full_tensor()
    return float(norm)


@torch.no_grad()
def _evaluate(model: nn.Module, eval_fn) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        return eval_fn(model)
    finally:
        model.train(was_training)


class _NullBar:
    def update(self, n): ...

    def set_postfix(self, **kw): ...

    def write(self, text):
        print(text)

    def close(self): ...


class _QuietBar(_NullBar):
    """A rank other than 0: prints nothing."""

    def write(self, text): ...


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
