"""``--compile``: the converted model's forward (and its backward) through ``torch.compile``.

What is compiled: the whole model, in place (as :meth:`torch.nn.Module.compile` does, see
:func:`compile_model`), after the method has converted it and it sits on the run's device.
In place means the model object, its submodules and its ``state_dict`` keys stay those of
the eager model (no ``_orig_mod.`` prefix, the ``torch.compile(model)`` wrapper's), so
checkpoints, resume, ``method.after_step`` and ``method.merge`` (a deep copy, which drops
the compiled call) work as in eager runs. Whole model rather than per block: the tasks'
models (transformers LMs, the translation Transformer, the MLP) share no notion of
"block", one graph covers embeddings and head too, and ``fullgraph=True`` then checks that
nothing in the forward breaks the graph. (Per-block compiling, torchtitan's choice, pays
off for deep models, whose identical blocks then share one compiled graph.)

Why there are no recompiles when a method changes its layers: every state change (SST's
``swap_``/``resvd_``, ReLoRA*'s merge and re-initialisation, GaLore's projections, which
live in the optimizer) copies into tensors of fixed shape, dtype and ``requires_grad``, and
dynamo guards on those, not on values. What does recompile, once each: evaluation
(``model.eval()`` under ``no_grad``) and a second input shape. With the default
``dynamic=None`` the second shape makes the sizes that changed symbolic, so later shapes
(translation's token-bucketed batches, a short last evaluation batch) reuse that graph; a
dimension that first changes later adds one more. ``dynamic=False`` would compile once per
distinct shape and, with ``fullgraph=True``, fail hard at dynamo's recompile limit (8),
which translation's buckets exceed in an epoch. SST's ``forward_mode="auto"`` picks the
evaluation from the token count: with symbolic sizes that choice becomes a guard, so there
is a graph per mode actually used, at most two.

Outside the compiled region, as in eager runs: the loss (a task's function of the model's
output), the optimizer step, the method guard (an optimizer step post-hook) and
``after_step``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn


def available_backends() -> list[str]:
    """Every backend ``torch.compile`` knows here, debug ones (``eager``, ``aot_eager``) too."""
    import torch._dynamo

    return sorted(name for name in torch._dynamo.list_backends(exclude_tags=())
                  if "TESTING_ONLY" not in name)  # dynamo's own tests' broken backends


def check_compile(enabled: bool, backend: str, device: torch.device) -> None:
    """Refuse a compile setting that cannot work, before a run writes anything.

    The backend must be registered, and it must compile a two-op function on ``device``
    (inductor without a C++ compiler, or ``tvm``/``openxla`` without their packages, are
    registered yet fail). The check runs once per backend and device in a process.

    Raises:
        ValueError: naming the backend and the allowed ones; or a backend given while
            compiling is off (it would be ignored).
    """
    if not enabled:
        if backend != "inductor":
            raise ValueError(f"compile_backend={backend!r} has no effect without compile=true "
                             "(--compile)")
        return
    allowed = available_backends()
    if backend not in allowed:
        raise ValueError(f"compile_backend={backend!r} is unknown; allowed: "
                         f"{', '.join(allowed)}")
    failure = _smoke_test(backend, str(device))
    if failure:
        raise ValueError(f"compile_backend={backend!r} fails on {device}: {failure} "
                         f"(allowed backends: {', '.join(allowed)}; eager and aot_eager need "
                         "no compiler)")


@functools.cache
def _smoke_test(backend: str, device: str) -> str:
    """``""`` if ``backend`` compiles and runs a tiny function on ``device``, else the error."""
    def probe(x):
        return torch.relu(x * 2.0 + 1.0)

    x = torch.arange(4.0, device=device)
    try:
        compiled = torch.compile(probe, backend=backend, fullgraph=True)
        if not torch.equal(compiled(x), probe(x)):
            return "its result differs from eager"
    except Exception as error:  # noqa: BLE001 (any failure means "unusable here")
        return _root_cause(error)
    return ""


def _root_cause(error: BaseException) -> str:
    """``"Type: first line"`` of the innermost exception (dynamo wraps the backend's own)."""
    while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
        error = inner
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def compile_model(model: nn.Module, backend: str | Callable) -> nn.Module:
    """Compile ``model``'s forward in place with ``backend`` (one graph, or an error).

    ``backend``: a name checked by :func:`check_compile`, or a backend callable (tests pass
    dynamo's counting backends).

    Like :meth:`torch.nn.Module.compile` (the compiled call goes where that method puts
    it, ``_compiled_call_impl``, which ``state_dict``, ``deepcopy`` and pickling ignore),
    except that the compiled frame is a function of this module calling the model: dynamo
    starts no frame in torch's own files, so ``nn.Sequential(...).compile()`` would compile
    only the package's layers inside it, one graph each, and leave the rest eager.

    Dynamo's caches are cleared first: a process that trains several models (``sst compare``)
    would otherwise pile their graphs onto the same code objects up to dynamo's recompile
    limit, after which it silently runs eager.

    Returns:
        ``model`` itself (same object, same ``state_dict`` keys).
    """
    import torch._dynamo

    torch._dynamo.reset()
    model._compiled_call_impl = torch.compile(_calling(model), backend=backend, fullgraph=True)
    return model


def _calling(model: nn.Module):
    """A function that calls ``model`` (hooks included): the frame dynamo compiles."""
    call_impl = model._call_impl

    def call(*args, **kwargs):
        return call_impl(*args, **kwargs)

    return call


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process since its last reset (summary figure)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
