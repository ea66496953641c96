"""Training methods behind one life cycle and one registry (see :mod:`.base`)."""

from . import full, sst  # noqa: F401  (registers the methods)
from .base import (
    MethodConfig,
    TrainingMethod,
    available_methods,
    make_method,
    method_from_state,
    register_method,
)
from .full import FullRank
from .sst import SparseSpectral, SSTConfig

__all__ = [
    "FullRank",
    "MethodConfig",
    "SSTConfig",
    "SparseSpectral",
    "TrainingMethod",
    "available_methods",
    "make_method",
    "method_from_state",
    "register_method",
]
