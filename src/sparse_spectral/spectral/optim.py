"""AdamW with per-slot step counters, and in-place optimizer-state resets.

PyTorch's Adam keeps one step counter per tensor. SST swaps single columns of ``U_active``
(rows of ``Vh_active``) for new vectors and must restart Adam for exactly those slots,
including the bias correction: zeroing the moments alone makes the first updates of a
swapped-in slot several times the learning rate (SPEC section 3). :class:`SlotAdamW` keeps
a vector of step counts for tensors whose param group declares a slot dimension, stored
under the state key ``"step"`` because ``Optimizer.load_state_dict`` casts every other key
to the parameter's dtype (SPEC section 9). For ordinary tensors it is exactly AdamW.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch

from .._util.shards import is_sharded, local, local_positions, replicated_like, sharded_dims

NO_SLOTS = -1


def _slot_dims(group: dict) -> list[int]:
    dims = group.get("slot_dims")
    return list(dims) if dims is not None else [NO_SLOTS] * len(group["params"])


def check_adam_hyperparameters(lr: float, betas, eps: float, weight_decay: float) -> None:
    """Raise ``ValueError`` naming any Adam setting outside its range."""
    if lr < 0:
        raise ValueError(f"lr={lr} must be >= 0")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"betas={betas} must lie in [0, 1)")
    if eps < 0 or weight_decay < 0:
        raise ValueError(f"eps={eps} and weight_decay={weight_decay} must be >= 0")


def _step_with(p: torch.Tensor, state: dict) -> torch.Tensor:
    """``state["step"]``, moved to ``p``'s device if it is a per-slot counter elsewhere.

    load_state_dict leaves "step" where it was loaded (e.g. a GPU checkpoint read with
    map_location="cpu"); per-slot counters must sit with p.
    """
    step = state["step"]
    if step.dim() and step.device != p.device:
        step = state["step"] = step.to(p.device)
    return step


def adamw_update_(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, beta1: float,
                  beta2: float, eps: float, wd: float) -> None:
    """One AdamW step of ``p`` in place, given its initialised ``state``.

    A scalar ``state["step"]`` gives exactly torch.optim.AdamW's single-tensor arithmetic; a
    per-slot step tensor (broadcastable to ``p``) gives each slot its own bias correction.
    :func:`adamw_foreach_` and :func:`adamw_foreach_slotted_` are the same arithmetic, op for
    op, over lists of tensors.
    """
    step = _step_with(p, state)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    step += 1
    if wd != 0:
        p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if step.dim() == 0:
        t = step.item()
        step_size = lr / (1 - beta1**t)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)
    else:
        # Bias corrections in the counters' float32, never in the parameter's dtype: in
        # bf16, beta2 = 0.999 rounds to 1 and 1 - beta2**t to 0.
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step).sqrt()).add_(eps)
        p.sub_(step_size * exp_avg / denom)


def _moments_foreach_(params: list, grads: list, states: list, lr: float, beta1: float,
                      beta2: float, wd: float) -> tuple[list, list, list]:
    """The shared first half of an AdamW step over lists; returns steps and both moments."""
    steps = [state["step"] for state in states]
    exp_avgs = [state["exp_avg"] for state in states]
    exp_avg_sqs = [state["exp_avg_sq"] for state in states]
    torch._foreach_add_(steps, 1)
    if wd != 0:
        torch._foreach_mul_(params, 1 - lr * wd)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    return steps, exp_avgs, exp_avg_sqs


def adamw_foreach_(params: list, grads: list, states: list, lr: float, beta1: float,
                   beta2: float, eps: float, wd: float) -> None:
    """:func:`adamw_update_` for tensors with scalar step counters, with foreach ops.

    The arithmetic is the single-tensor one element for element (each foreach op applies
    the same scalar op to each tensor; on CPU they are exactly those ops), so results are
    bit-identical to calling :func:`adamw_update_` per tensor.
    """
    steps, exp_avgs, exp_avg_sqs = _moments_foreach_(params, grads, states, lr, beta1, beta2,
                                                     wd)
    # All counters in one read (scalar steps live on the CPU unless a checkpoint put them
    # elsewhere; then one read each).
    if all(step.device.type == "cpu" for step in steps):
        counts = torch.stack(steps).tolist()
    else:
        counts = [step.item() for step in steps]
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [math.sqrt(1 - beta2**t) for t in counts])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms,
                            [-(lr / (1 - beta1**t)) for t in counts])


def adamw_foreach_slotted_(params: list, grads: list, states: list, lr: float, beta1: float,
                           beta2: float, eps: float, wd: float) -> None:
    """:func:`adamw_update_` for tensors with per-slot step counters, with foreach ops.

    Bit-identical to the single-tensor form: ``1 - x`` is computed as ``(-x) + 1`` (the same
    IEEE operation) and ``lr / x`` as ``reciprocal(x) * lr``, which is what torch evaluates
    ``lr / tensor`` as.
    """
    steps, exp_avgs, exp_avg_sqs = _moments_foreach_(params, grads, states, lr, beta1, beta2,
                                                     wd)
    step_sizes = torch._foreach_pow(beta1, steps)  # lr / (1 - beta1**step), per slot
    torch._foreach_neg_(step_sizes)
    torch._foreach_add_(step_sizes, 1)
    torch._foreach_reciprocal_(step_sizes)
    torch._foreach_mul_(step_sizes, lr)
    corrections = torch._foreach_pow(beta2, steps)  # sqrt(1 - beta2**step), per slot
    torch._foreach_neg_(corrections)
    torch._foreach_add_(corrections, 1)
    torch._foreach_sqrt_(corrections)
    # Out of place where the single-tensor form is: a bf16 parameter's moments divided by
    # float32 corrections promote to float32 there.
    denoms = torch._foreach_div(torch._foreach_sqrt(exp_avg_sqs), corrections)
    torch._foreach_add_(denoms, eps)
    updates = torch._foreach_mul(step_sizes, exp_avgs)
    torch._foreach_div_(updates, denoms)
    torch._foreach_sub_(params, updates)


class SlotAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) whose bias correction can restart per slot.

    A param group may carry ``"slot_dims"``: one int per parameter, the dimension along
    which slots lie (``1`` for ``U_active`` (m, r), ``0`` for ``Vh_active`` (r, n)) or
    ``-1`` for an ordinary tensor. The step counter of a slotted tensor has the
    parameter's shape with 1 everywhere except the slot dimension, e.g. ``(1, r)``.

    Args:
        params: parameters or param groups.
        lr: learning rate.
        betas: Adam's ``(beta1, beta2)``.
        eps: added to the denominator.
        weight_decay: decoupled weight decay, as in :class:`torch.optim.AdamW`.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        check_adam_hyperparameters(lr, betas, eps, weight_decay)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        for group in self.param_groups:
            dims = _slot_dims(group)
            if len(dims) != len(group["params"]):
                raise ValueError(
                    f"slot_dims has {len(dims)} entries for {len(group['params'])} parameters"
                )

    def _init_state(self, p: torch.Tensor, slot_dim: int) -> dict:
        if slot_dim == NO_SLOTS:
            step = torch.zeros((), dtype=torch.float32)
        else:
            # An FSDP2 (DTensor) parameter gets a DTensor counter: sharded like p where the
            # slot dimension is sharded (each rank counts its own slots), replicated where it
            # is not (every rank resets the same slots, so the copies stay equal).
            lp = local(p)
            shape = [1] * p.dim()
            shape[slot_dim] = lp.shape[slot_dim]
            step = replicated_like(p, torch.zeros(shape, dtype=torch.float32, device=lp.device),
                                   keep_dims={slot_dim % p.dim()})
        state = self.state[p]
        state["step"] = step
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            # One batch of foreach ops per (device, dtype, kind of step counter): a handful
            # of kernels per group instead of about 16 per parameter.
            batches: dict[tuple, list] = {}
            for p, slot_dim in zip(group["params"], _slot_dims(group)):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SlotAdamW does not support sparse gradients")
                state = self.state[p] or self._init_state(p, slot_dim)
                _step_with(p, state)
                key = (p.device, p.dtype, state["step"].dim() > 0)
                if is_sharded(p):
                    # Elementwise on the local shards: DTensor does not mix with the plain
                    # scalar step, and the shards of p, grad and state line up (the foreach
                    # ops work in place on these views of the shards).
                    state = {name: local(value) if torch.is_tensor(value) else value
                             for name, value in state.items()}
                batches.setdefault(key, []).append((local(p), local(p.grad), state))
            for (_, _, per_slot), batch in batches.items():
                update = adamw_foreach_slotted_ if per_slot else adamw_foreach_
                update([p for p, _, _ in batch], [g for _, g, _ in batch],
                       [state for _, _, state in batch], lr, beta1, beta2, eps, wd)
        return loss


def find_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> dict | None:
    """The optimizer state of ``param``, unwrapping wrappers that expose ``.optimizer``."""
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    if optimizer is None:
        return None
    return optimizer.state.get(param) or None


_warned_scalar_step = False


def reset_slots(optimizer, param: torch.Tensor, slots: torch.Tensor, dim: int) -> None:
    """Restart the optimizer state of some slots of ``param``, in place.

    Every state tensor shaped like ``param`` is zeroed at ``slots`` along ``dim``; a
    per-slot ``"step"`` is zeroed there too. An optimizer with one scalar step per tensor
    (e.g. :class:`torch.optim.AdamW`) cannot restart the bias correction of a single slot;
    a warning says so once.

    Args:
        optimizer: the optimizer (or a wrapper exposing ``.optimizer``), or None.
        param: the parameter whose state to reset.
        slots: int64 slot positions along ``dim``.
        dim: slot dimension of ``param``.
    """
    global _warned_scalar_step
    state = find_state(optimizer, param)
    if state is None or slots.numel() == 0:
        return
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        slots_here = slots
        if dim % max(param.dim(), 1) in sharded_dims(value):
            # Global slot numbers -> positions in this rank's shard (FSDP2).
            slots_here = local_positions(value, dim, slots.to("cpu"))[0]
        slots_here = slots_here.to(local(value).device)
        value = local(value)
        if key == "step":
            if value.dim() == param.dim():
                value.index_fill_(dim, slots_here, 0)
            elif not _warned_scalar_step:
                _warned_scalar_step = True
                warnings.warn(
                    f"{type(optimizer).__name__} keeps one step counter per tensor, so the "
                    "bias correction of swapped-in SST slots cannot restart; use "
                    "sparse_spectral.SlotAdamW (method.build_optimizer) for faithful resets.",
                    stacklevel=2,
                )
        elif value.shape == local(param).shape:
            value.index_fill_(dim, slots_here, 0)


def reset_param_state(optimizer, params: Iterable[torch.Tensor]) -> None:
    """Zero all optimizer state (moments and step counters) of ``params``, in place.

    In place keeps the state dictionary's keys and tensor objects stable, which matters for
    wrappers and checkpoints that hold references to them.
    """
    for param in params:
        state = find_state(optimizer, param)
        if state is None:
            continue
        for value in state.values():
            if torch.is_tensor(value):
                local(value).zero_()
