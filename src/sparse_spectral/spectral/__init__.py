"""The SST layer and its parts: autograd function, samplers, slot-aware optimizer."""

from .function import SpectralLinearFunction, spectral_linear
from .layer import SpectralLinear, thin_svd
from .lowrank import LowRankLinear
from .optim import SlotAdamW, reset_param_state, reset_slots
from .sampling import SAMPLERS, select_indices

__all__ = [
    "SAMPLERS",
    "LowRankLinear",
    "SlotAdamW",
    "SpectralLinear",
    "SpectralLinearFunction",
    "reset_param_state",
    "reset_slots",
    "select_indices",
    "spectral_linear",
    "thin_svd",
]
