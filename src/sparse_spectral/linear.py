"""Linear module kinds, and the fixed operands a linear layer may take in place of a tensor.

Module kinds: :class:`torch.nn.Linear` and GPT-2's ``transformers.pytorch_utils.Conv1D``
(which stores its weight transposed, ``(in, out)``). ``transformers`` is an optional
dependency and is never imported just to inspect a model.

The fixed-operand protocol
--------------------------
A *fixed operand* stands for a constant ``(rows, features)`` matrix ``X`` of data: it is
not a :class:`torch.Tensor`, it never requires or receives a gradient, and it may store
``X`` in any form (e.g. :class:`~sparse_spectral.sparse_rows.SparseRows`, CSR). It provides

* ``x.shape``: ``(rows, features)``;
* ``x @ M``: ``M (features, j)`` tensor -> ``(rows, j)`` tensor ``X M``, differentiable in
  ``M`` (``__matmul__``);
* ``G @ x``: ``G (j, rows)`` tensor -> ``(j, features)`` tensor ``G X``, differentiable in
  ``G`` (``__rmatmul__``, which torch reaches because ``Tensor.__matmul__`` returns
  ``NotImplemented`` for a non-tensor);
* ``x.to_dense()``: the ``(rows, features)`` tensor, for code that knows no better.

These two products are all a linear layer's forward (``X W^T``) and weight gradient
(``G^T X``) need, so a layer that writes them as ``x @ W.t()`` and ``g.t() @ x`` serves
tensors and fixed operands alike without knowing the operand's type. A layer that does so
says so with the class attribute ``accepts_operands = True``; :func:`apply_linear` hands
fixed operands only to such layers, and to a plain ``nn.Linear`` through the products.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol

import torch
from torch import nn

__all__ = [
    "FixedOperand",
    "LINEAR_TYPES",  # noqa: F822 (made on first access by the module __getattr__)
    "apply_linear",
    "is_conv1d",
    "is_linear",
    "linear_shape",
    "linear_weight",
    "operand_linear",
]

_CONV1D_MODULE = "transformers.pytorch_utils"


class FixedOperand(Protocol):
    """A constant ``(rows, features)`` data matrix that is not a tensor (module docstring)."""

    @property
    def shape(self) -> torch.Size: ...

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor: ...

    def __rmatmul__(self, other: torch.Tensor) -> torch.Tensor: ...

    def to_dense(self) -> torch.Tensor: ...


# --------------------------------------------------------------------------
# Linear module kinds
# --------------------------------------------------------------------------


def _import_linear_types() -> tuple[type[nn.Module], ...]:
    """Build ``LINEAR_TYPES``, importing transformers if it is installed."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def __getattr__(name: str) -> Any:
    """Compute ``LINEAR_TYPES`` on first access (PEP 562).

    Importing transformers costs seconds, so it only happens when a caller
    actually asks for the tuple.
    """
    if name == "LINEAR_TYPES":
        value = _import_linear_types()
        globals()["LINEAR_TYPES"] = value  # cache: later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _loaded_conv1d() -> type[nn.Module] | None:
    """Return transformers' ``Conv1D`` class if transformers is already loaded.

    A ``Conv1D`` instance can only exist once its defining module has been
    imported, so checking ``sys.modules`` is exact and never pays for an import.
    """
    module = sys.modules.get(_CONV1D_MODULE)
    return getattr(module, "Conv1D", None)


def is_conv1d(module: object) -> bool:
    """True for GPT-2's ``Conv1D``, which stores its weight transposed as (in, out)."""
    conv1d = _loaded_conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a linear module in the ``(out, in)`` = ``(m, n)`` layout (a view).

    Raises:
        TypeError: if ``module`` is not a linear module (:func:`is_linear`). Converted
            layers (SST, LoRA) have a ``weight`` property too, in the layout of the module
            they replaced, so ``.weight`` alone does not tell the layout.
    """
    if not is_linear(module):
        raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")
    return module.weight.t() if is_conv1d(module) else module.weight


def is_linear(module: object) -> bool:
    """Tell whether ``module`` is a linear layer a method may replace.

    Args:
        module: Any object, typically an ``nn.Module``.

    Returns:
        True for ``nn.Linear`` (and subclasses) and GPT-2's ``Conv1D``.
    """
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """Return the ``(out_features, in_features)`` shape of a linear module.

    Args:
        module: An ``nn.Linear`` or a transformers ``Conv1D``.

    Returns:
        ``(m, n)`` such that the layer maps ``n`` inputs to ``m`` outputs.

    Raises:
        TypeError: If ``module`` is not a linear module.
    """
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if is_conv1d(module):
        # Conv1D stores its weight transposed: (in_features, out_features).
        n, m = module.weight.shape
        return int(m), int(n)
    raise TypeError(
        f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}"
    )


# --------------------------------------------------------------------------
# Fixed operands
# --------------------------------------------------------------------------


def operand_linear(x: FixedOperand, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``X W^T + b`` through the operand's product.

    Args:
        x: ``(rows, n)`` fixed operand.
        weight: ``(m, n)``.
        bias: ``(m,)`` or None.

    Returns:
        ``(rows, m)``, differentiable in ``weight`` and ``bias``.
    """
    y = x @ weight.t()
    return y if bias is None else y + bias


def apply_linear(module: nn.Module, x: torch.Tensor | FixedOperand) -> torch.Tensor:
    """``module(x)``, keeping a fixed operand out of dense form where the module allows it.

    Tensors go to ``module`` as they are. A fixed operand goes to a module marked
    ``accepts_operands``, through the products to a plain ``nn.Linear`` (exactly that
    type: a subclass may change the forward), and as ``x.to_dense()`` to anything else.

    Args:
        module: Any module mapping ``(..., n)`` to ``(..., m)``.
        x: ``(..., n)`` tensor or ``(rows, n)`` fixed operand.

    Returns:
        ``(..., m)``.
    """
    if isinstance(x, torch.Tensor) or getattr(module, "accepts_operands", False):
        return module(x)
    if type(module) is nn.Linear:
        return operand_linear(x, module.weight, module.bias)
    return module(x.to_dense())
