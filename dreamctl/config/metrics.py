"""The metric names a recipe's eval.metrics, an ablate spec and `evaluate --metrics` take, and the eval settings
evaluate would refuse, checked before a run trains.

The names and what is known of each are metrics/registry.py's, which is free of numpy and torch, so the
recipe schema does not depend on the computing side of the metrics package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dreamctl.config.schema import IMAGES_PER_SEED, Recipe
from dreamctl.errors import ConfigError
from dreamctl.metrics.registry import METRIC_NAMES


def parse_metrics(metrics: Sequence[str], where: str = "--metrics") -> list[str]:
    """The metric names asked for, lower case, each once; ConfigError naming `where` for unknown ones."""
    known = ", ".join(METRIC_NAMES)
    if not all(isinstance(m, str) for m in metrics):
        raise ConfigError(f"{where} must list metric names, got {list(metrics)!r}; choose from {known}")
    wanted = list(dict.fromkeys(m.strip().lower() for m in metrics if m.strip()))
    unknown = [m for m in wanted if m not in METRIC_NAMES]
    if unknown or not wanted:
        raise ConfigError(f"unknown metric(s) {', '.join(unknown) or '(none given)'} in {where}; choose from {known}")
    return wanted


def check_eval_num(num: Any, where: str) -> None:
    """ConfigError unless `num`, the images an evaluation draws, is an integer from 2 (a covariance needs two)
    to IMAGES_PER_SEED (its images are one base seed's). `where` names the setting: eval.num, --num, ..."""
    if type(num) is not int or not 2 <= num <= IMAGES_PER_SEED:
        raise ConfigError(f"{where} {num!r}: evaluate draws 2 (a covariance needs two) to "
                          f"{IMAGES_PER_SEED:,} images (one base seed's)")


def check_eval_section(recipe: Recipe, source: str) -> Recipe:
    """The recipe with eval.metrics in the names evaluate takes; ConfigError naming `source` for settings
    evaluate would refuse. Checked when a recipe is loaded to train (or resumed with new settings), not
    when its training is done and evaluate first reads them."""
    e = recipe.eval
    check_eval_num(e.num, f"{source}: eval.num")
    if e.ref_num is not None and e.ref_num < 2:
        raise ConfigError(f"{source}: eval.ref_num {e.ref_num}: evaluate needs at least 2 reference images")
    try:
        metrics = tuple(parse_metrics(e.metrics, "eval.metrics"))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return recipe.model_copy(update={"eval": e.model_copy(update={"metrics": metrics})})
