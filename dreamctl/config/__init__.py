"""Recipes: YAML files validated into typed, frozen models (schema) and how they are read (load)."""

from dreamctl.config.keys import flat_items
from dreamctl.config.load import (
    RECIPES_DIR,
    apply_overrides,
    load_recipe,
    parse_override,
    recipe_from_file,
    recipe_from_yaml,
    recipe_path,
    recipe_to_yaml,
    set_args,
)
from dreamctl.config.schema import (
    DataConfig,
    DiffusionConfig,
    EvalConfig,
    LossConfig,
    LossKind,
    ModelConfig,
    OptimConfig,
    Recipe,
    SampleConfig,
    TrainConfig,
    validate_recipe,
)

__all__ = [
    "RECIPES_DIR", "DataConfig", "DiffusionConfig", "EvalConfig", "LossConfig", "LossKind", "ModelConfig",
    "OptimConfig", "Recipe", "SampleConfig", "TrainConfig", "apply_overrides", "flat_items", "load_recipe",
    "parse_override", "recipe_from_file", "recipe_from_yaml", "recipe_path", "recipe_to_yaml", "set_args",
    "validate_recipe",
]
