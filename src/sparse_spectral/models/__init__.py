"""Model presets: transformers causal LMs (LLaMA, OPT, GPT-2) built from configs."""

from .materialize import materialize
from .presets import (
    FAMILIES,
    PRESETS,
    ModelPreset,
    block_linear_modules,
    build_lm,
    count_block_linear,
    describe_presets,
    get_preset,
    preset_parameter_count,
)

__all__ = [
    "FAMILIES",
    "PRESETS",
    "ModelPreset",
    "block_linear_modules",
    "build_lm",
    "count_block_linear",
    "describe_presets",
    "get_preset",
    "materialize",
    "preset_parameter_count",
]
