"""Training methods behind one life cycle and one registry (see :mod:`.base`)."""

from . import apollo, full, galore, lora, relora, sst  # noqa: F401  (registers the methods)
from .apollo import Apollo, ApolloConfig
from .base import (
    LowRankConfig,
    MethodConfig,
    TrainingMethod,
    available_methods,
    make_method,
    method_config_class,
    method_config_fields,
    method_for_run,
    method_from_state,
    method_option_fields,
    register_method,
    register_variant,
)
from .full import FullRank
from .galore import GaLore, GaLoreConfig
from .lora import LoRA, LoRAConfig, LoRALinear
from .relora import ReLoRA, ReLoRAConfig
from .sst import SST_VARIANTS, SparseSpectral, SSTConfig

__all__ = [
    "SST_VARIANTS",
    "Apollo",
    "ApolloConfig",
    "FullRank",
    "GaLore",
    "GaLoreConfig",
    "LoRA",
    "LoRAConfig",
    "LoRALinear",
    "LowRankConfig",
    "ReLoRA",
    "ReLoRAConfig",
    "MethodConfig",
    "SSTConfig",
    "SparseSpectral",
    "TrainingMethod",
    "available_methods",
    "make_method",
    "method_config_class",
    "method_config_fields",
    "method_for_run",
    "method_from_state",
    "method_option_fields",
    "register_method",
    "register_variant",
]
