"""Typed recipes: dataclasses in `schema`, YAML loading and dotted overrides in `loader`."""

from pedray.config.loader import ConfigError, load_recipe, parse_overrides, to_dict
from pedray.config.schema import (
    DataConfig, EvalConfig, LoraConfig, ModelConfig, OptimConfig, Recipe, ScalingConfig,
    ServeConfig, StageConfig, TuneConfig,
)

__all__ = [
    "ConfigError", "load_recipe", "parse_overrides", "to_dict", "DataConfig", "EvalConfig", "LoraConfig",
    "ModelConfig", "OptimConfig", "Recipe", "ScalingConfig", "ServeConfig", "StageConfig", "TuneConfig",
]
