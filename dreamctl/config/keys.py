"""Recipe keys by what they do to a run (change its trained weights or not; may change on resume), and a
recipe as flat `section.key: value` pairs, for compare, ablate and resume."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from dreamctl.config.schema import Recipe
from dreamctl.config.values import bool_for_number

# Settings that leave the trained weights as they are (a key, or a section ending in "."): what a run
# logs, keeps and draws, how it is sampled and evaluated, and where its data lies (the data itself is
# known by its content hash). Runs that differ only in these and the seed are seeds of one experiment.
BOOKKEEPING_KEYS = ("train.log_every", "train.checkpoint_every", "train.sample_every", "train.keep_checkpoints",
                    "train.sample_grid", "sample.", "eval.", "data.path")
NOT_SETTINGS = ("name", "description")  # a recipe's top-level keys, which train nothing
# What `resume --set` may change: bookkeeping, the run's length, and the optimizer settings, which act
# from the resumed step on (a lower lr after a NaN). run.json's "resumes" lists each resume's overrides.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", *BOOKKEEPING_KEYS,
                  "optim.lr", "optim.grad_clip", "optim.warmup_steps")
RESUMABLE_TEXT = ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)  # sample.*: a section


def leaves_weights(key: str) -> bool:
    """Whether a setting can only leave the trained weights as they are: a bookkeeping key, but not data.path,
    which may name other data (the same data moved is told by its content hash, not here)."""
    return key.startswith(BOOKKEEPING_KEYS) and key != "data.path"


def setting_value(key: str, value: Any) -> Any:
    """A value as the recipe holds it, for comparing values as written (`1e-3`, which YAML reads as a string,
    is 0.001 for optim.lr); the value itself where `key` is not one setting or the value is refused there
    (the recipe's validation then names it)."""
    section, _, name = key.partition(".")
    holder = Recipe.model_fields.get(section)
    field = getattr(holder.annotation, "model_fields", {}).get(name) if holder else None
    if field is None or bool_for_number(field.annotation, value):
        return value
    try:
        return TypeAdapter(field.annotation).validate_python(value)
    except ValidationError:
        return value


def flat_items(recipe: Recipe) -> dict[str, Any]:
    """{'train.batch_size': 128, ...}: what compare uses to show the settings that differ."""
    out: dict[str, Any] = {}
    for section, values in recipe.model_dump(mode="json").items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out
