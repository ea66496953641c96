"""Train a converted model with the Hugging Face ``transformers.Trainer``.

::

    from sparse_spectral.training.hf import SpectralTrainer

    method = make_method("sst", rank=16, iteration_interval=50)
    model = method.prepare(model)
    trainer = SpectralTrainer(method=method, model=model, args=args, train_dataset=ds)
    trainer.train()                                  # or train(resume_from_checkpoint=True)

A stock ``Trainer`` would train a converted model with its own AdamW and never run the
method's schedule (the guard, :mod:`sparse_spectral.methods.guard`, stops it). What
:class:`SpectralTrainer` changes, and nothing else:

* **optimizer** (``create_optimizer``): ``method.build_optimizer`` with the arguments'
  ``learning_rate``, ``weight_decay``, ``adam_beta1/2`` and ``adam_epsilon``: SlotAdamW for
  SST (per-slot restarts), GaLoreAdamW for GaLore, ApolloAdamW for APOLLO(-Mini), SlotAdamW
  (= AdamW) otherwise, with the
  method's own param groups. ``optimizer_cls_and_kwargs`` picks another class; an
  explicit ``optimizers=(opt, sched)`` is used as given.
* **schedule** (``create_scheduler``): the Trainer's own (``lr_scheduler_type``, warm-up,
  ``max_steps``), times ``method.restart_factor(t)`` for methods that re-warm after each
  restart (``restart_warmup_steps``). ``lr_scheduler_type="cosine_with_min_lr"`` with
  ``lr_scheduler_kwargs={"min_lr_rate": 0.1}`` is the project's
  :func:`~.schedules.method_lr_lambda`.
* **schedule of the method**: :class:`SpectralCallback` calls ``method.after_step(
  state.global_step, optimizer)`` once per optimizer step (after the step, the scheduler
  and ``zero_grad``; gradient accumulation and ``max_grad_norm`` clipping stay the
  Trainer's).
* **checkpoints**: ``method.state_dict()`` goes to ``sparse_spectral_method.pt`` beside
  ``optimizer.pt`` in every ``checkpoint-N`` folder; on resume it is loaded after the model
  weights and before the optimizer, so a resumed run continues bit-exactly (on CPU, at the
  same thread count).
* **many processes**: under ``torchrun`` or ``accelerate launch`` (DDP; the Trainer wraps
  the model, the optimizer is built on the unwrapped one, whose parameters DDP shares, so
  the guard and the method see them) ``train`` and every ``after_step`` run inside
  :func:`~sparse_spectral._util.collectives.replicated_ranks` on every rank: SST's re-SVD
  of layer ``l`` is computed on rank ``l mod N`` and broadcast, rank 0's draws are
  broadcast, GaLore's projections are rank 0's, APOLLO's are counter-seeded (the same
  draw on every rank without communication), so the replicas stay bitwise identical.
  The main process alone writes ``sparse_spectral_method.pt`` (atomically); every rank
  loads it on resume. FSDP, DeepSpeed, ``parallelism_config`` and tensor-parallel models
  are refused with a ``ValueError``: accelerate's FSDP2 shards every parameter on dim 0,
  which splits SST's ``Vh`` across its slots (the project's own ``--parallel fsdp2``
  shards it by columns).

Why a subclass and not ``Trainer(..., optimizers=..., callbacks=[...])``: the optimizer
needs the arguments' hyper-parameters and the schedule needs the step count the Trainer
computes, and only the Trainer's own save/load hooks see the checkpoint folder at the right
moment of a resume (a callback is not told which checkpoint is being resumed). Another
``Trainer`` subclass (e.g. TRL's) gets the same with ``class MyTrainer(SpectralTrainerMixin,
SFTTrainer)``.

The final ``trainer.save_model()`` saves the converted model; ``method.merge(model)`` gives
the plain dense one. Importing this module imports ``transformers`` (the ``hf`` extra);
importing :mod:`sparse_spectral` does not.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.training_args import ParallelMode

from .._util.atomic import atomic_write
from .._util.collectives import replicated_ranks

METHOD_STATE_NAME = "sparse_spectral_method.pt"
OPTIMIZER_NAME = "optimizer.pt"
_ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused")

__all__ = ["METHOD_STATE_NAME", "SpectralCallback", "SpectralTrainer", "SpectralTrainerMixin"]


def data_parallel(args) -> bool:
    """Whether ``args`` (``TrainingArguments``) train one replica per process: DDP under
    ``torchrun`` / ``accelerate launch`` with more than one process."""
    return args.parallel_mode == ParallelMode.DISTRIBUTED and args.world_size > 1


def unwrap_optimizer(optimizer):
    """The optimizer inside wrappers that expose it as ``.optimizer`` (accelerate's)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class SpectralCallback(TrainerCallback):
    """Run ``method.after_step(global_step, optimizer)`` after every optimizer step.

    ``on_step_end`` fires once per optimizer step (not per micro-batch), after the step,
    the scheduler and ``zero_grad``, with ``state.global_step`` already counting it. Under
    DDP (:func:`data_parallel`) every rank runs it inside
    :func:`~sparse_spectral._util.collectives.replicated_ranks`, so the method's changes
    (SST's re-SVDs and draws) are computed once and broadcast: the replicas stay bitwise
    identical.

    Args:
        method: the training method that prepared the model.
        optimizer: the optimizer to pass (default: the Trainer's, unwrapped).
    """

    def __init__(self, method, optimizer=None):
        self.method = method
        self.optimizer = optimizer

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        with replicated_ranks(data_parallel(args)):
            self.method.after_step(state.global_step,
                                   unwrap_optimizer(self.optimizer or optimizer))
        return control


def _restart_wrapped(multiplier, method):
    """``multiplier(t) * method.restart_factor(t)`` (a function: ``LambdaLR`` saves none of it)."""
    def scaled(t: int) -> float:
        return multiplier(t) * method.restart_factor(t)
    return scaled


def _has_restart_warmup(method) -> bool:
    return bool(method.restart_cycle()) and bool(getattr(method.config, "restart_warmup_steps", 0))


def _sharding_settings(trainer) -> list[str]:
    """The settings of ``trainer`` that would shard the model or the optimizer state."""
    args, found = trainer.args, []
    if args.fsdp or getattr(trainer, "is_fsdp_enabled", False) \
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        found.append(f"fsdp={args.fsdp!r} (or accelerate launch --use_fsdp)")
    if args.deepspeed or getattr(trainer, "is_deepspeed_enabled", False):
        found.append(f"deepspeed={args.deepspeed!r} (or accelerate launch --use_deepspeed)")
    if getattr(args, "parallelism_config", None) is not None:
        found.append(f"parallelism_config={args.parallelism_config!r}")
    if (getattr(trainer.model, "tp_size", None) or 1) > 1:
        found.append(f"a tensor-parallel model (tp_size={trainer.model.tp_size})")
    return found


def _check_prepared(method, model) -> None:
    """Raise unless ``model`` holds the layers (or weights) that ``method`` prepared."""
    layers = getattr(method, "layers", None)
    if layers is not None:  # a replacing method
        modules = {id(m) for m in model.modules()}
        if not layers or any(id(layer) not in modules for _, layer in layers):
            raise ValueError(f"the model was not prepared by this {method.name!r} method: "
                             "call model = method.prepare(model) before building the trainer")
    targets = getattr(method, "target_ids", None)
    if targets is not None:  # GaLore, APOLLO
        params = {id(p) for p in model.parameters()}
        if not targets or not targets <= params:
            raise ValueError(f"the model was not prepared by this {method.name!r} method: "
                             "call model = method.prepare(model) before building the trainer")


class SpectralTrainerMixin:
    """The method's optimizer, schedule, ``after_step`` and checkpoint state in a ``Trainer``.

    Put it before a ``transformers.Trainer`` (sub)class; :class:`SpectralTrainer` is
    ``SpectralTrainerMixin`` + ``Trainer``. Takes ``method=`` (keyword) besides the
    Trainer's own arguments; ``model`` must be the model ``method.prepare`` returned.

    Attributes:
        method: the training method.
    """

    def __init__(self, *args, method, **kwargs):
        self.method = method
        super().__init__(*args, **kwargs)
        _check_prepared(method, self.model)
        sharding = _sharding_settings(self)
        if sharding:
            # accelerate's FSDP2 shards every parameter on dim 0, so SST's Vh (r x n) is
            # split across its r slots (its swaps and per-slot restarts need them whole),
            # and replaces the parameters the method and its guard hold.
            raise ValueError(
                f"{sharding[0]}: {type(self).__name__} runs one process or DDP (torchrun / "
                "accelerate launch without FSDP or DeepSpeed); sharding through the Trainer "
                "is not supported. For FSDP2 use the project's loop: torchrun "
                "--nproc_per_node N -m sparse_spectral.cli train ... --parallel fsdp2")
        optim = str(getattr(self.args.optim, "value", self.args.optim))
        if optim not in _ADAMW_NAMES and self.optimizer is None \
                and getattr(self, "optimizer_cls_and_kwargs", None) is None:
            raise ValueError(f"args.optim={optim!r}: {type(self).__name__} trains with the "
                             f"{method.name!r} method's own optimizer (method.build_optimizer); "
                             "leave optim at its default, or pass optimizer_cls_and_kwargs")
        if any(isinstance(cb, SpectralCallback) for cb in self.callback_handler.callbacks):
            raise ValueError(f"{type(self).__name__} adds its own SpectralCallback; a second "
                             "one would run method.after_step twice per step")
        # First, so that other callbacks' on_step_end see the model after the method's step.
        self.callback_handler.callbacks.insert(0, SpectralCallback(method))

    def train(self, *args, **kwargs):
        """``Trainer.train``; under DDP (:func:`data_parallel`) inside ``replicated_ranks``.

        There the methods' between-step changes come out identical on every rank by
        construction: SST's re-SVD of layer ``l`` is computed on rank ``l mod N`` and
        broadcast, and rank 0's draws are broadcast; APOLLO's projections are counter-seeded
        (equal on every rank by construction); GaLore's projection (computed in the
        optimizer step) is rank 0's, broadcast.
        """
        with replicated_ranks(data_parallel(self.args)):
            return super().train(*args, **kwargs)

    # ------------------------------------------------------------ optimizer and schedule
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """``method.build_optimizer`` with the arguments' Adam settings (unless given).

        Under DDP the Trainer calls this before wrapping, with the unwrapped model; the
        wrapper trains the same parameter objects, so the method's param groups and its
        guard see what DDP trains.
        """
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            chosen = getattr(self, "optimizer_cls_and_kwargs", None)  # transformers >= 4.47
            if chosen is not None:
                optimizer_cls, kwargs = chosen[0], dict(chosen[1])
            else:
                optimizer_cls = None
                kwargs = {"betas": (self.args.adam_beta1, self.args.adam_beta2),
                          "eps": self.args.adam_epsilon}
            kwargs.setdefault("lr", self.args.learning_rate)
            kwargs.setdefault("weight_decay", self.args.weight_decay)
            self.optimizer = self.method.build_optimizer(opt_model, optimizer_cls, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's scheduler, times ``method.restart_factor(t)`` where that is not 1.

        Raises:
            ValueError: the method re-warms after restarts but the scheduler is not a
                ``LambdaLR`` (e.g. ``reduce_lr_on_plateau``).
        """
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if created and _has_restart_warmup(self.method):
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                raise ValueError(
                    f"lr_scheduler_type={self.args.lr_scheduler_type!r} gives a "
                    f"{type(scheduler).__name__}, which cannot take the {self.method.name!r} "
                    "method's re-warm-up after restarts (restart_warmup_steps): use a "
                    "LambdaLR schedule (linear, cosine, cosine_with_min_lr, ...)")
            scheduler.lr_lambdas = [_restart_wrapped(f, self.method)
                                    for f in scheduler.lr_lambdas]
        return scheduler

    # ------------------------------------------------------------ checkpoints
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The Trainer's files, then ``sparse_spectral_method.pt``: the main process alone
        writes it (the ranks' method states are identical), atomically."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            state = self.method.state_dict()
            atomic_write(os.path.join(output_dir, METHOD_STATE_NAME),
                         lambda path: torch.save(state, path))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """Method state first (the model weights are loaded by now), then the optimizer.

        Every rank loads the same file (the Trainer has loaded the same weights on each).

        Raises:
            FileNotFoundError: the checkpoint has an optimizer state but no method state
                (it was not written by a :class:`SpectralTrainerMixin` trainer).
        """
        if checkpoint is not None:
            path = os.path.join(checkpoint, METHOD_STATE_NAME)
            if os.path.isfile(path):
                self.method.load_state_dict(load_method_state(path))
            elif os.path.isfile(os.path.join(checkpoint, OPTIMIZER_NAME)):
                raise FileNotFoundError(
                    f"{checkpoint} has {OPTIMIZER_NAME} but no {METHOD_STATE_NAME}: it was not "
                    f"written by {type(self).__name__}, so the {self.method.name!r} method's "
                    "state cannot be restored")
        super()._load_optimizer_and_scheduler(checkpoint)


def load_method_state(path: str | os.PathLike) -> dict[str, Any]:
    """A saved ``method.state_dict()`` (plain values: ``weights_only`` loading)."""
    return torch.load(path, weights_only=True, map_location="cpu")


class SpectralTrainer(SpectralTrainerMixin, Trainer):
    """``transformers.Trainer`` that trains with a sparse_spectral method (module doc)."""
