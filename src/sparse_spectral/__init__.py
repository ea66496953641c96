"""Sparse Spectral Training (SST) for PyTorch.

Quick use::

    from sparse_spectral import make_method
    method = make_method("sst", rank=16, iteration_interval=50)
    model = method.prepare(model)
    optimizer = method.build_optimizer(model, lr=1e-3)
    for step, batch in enumerate(batches, start=1):
        loss = model(batch).loss; loss.backward()
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
        method.after_step(step, optimizer)
    dense = method.merge(model)
"""

from ._version import __version__
from .accounting import (  # noqa: E402
    MemoryReport,
    count_parameters,
    format_trainable_parameters,
    memory_report,
    print_trainable_parameters,
)
from .methods import (  # noqa: E402
    MethodConfig,
    SSTConfig,
    TrainingMethod,
    available_methods,
    make_method,
    method_from_state,
)
from .models.materialize import materialize  # noqa: E402
from .serialization import load_pretrained, save_pretrained  # noqa: E402
from .spectral import LowRankLinear, SlotAdamW, SpectralLinear  # noqa: E402
from .spectral.pruning import prune_spectrum  # noqa: E402

__all__ = [
    "LowRankLinear",
    "MemoryReport",
    "MethodConfig",
    "SSTConfig",
    "SlotAdamW",
    "SpectralLinear",
    "TrainingMethod",
    "__version__",
    "available_methods",
    "count_parameters",
    "format_trainable_parameters",
    "load_pretrained",
    "make_method",
    "materialize",
    "memory_report",
    "method_from_state",
    "print_trainable_parameters",
    "prune_spectrum",
    "save_pretrained",
]
