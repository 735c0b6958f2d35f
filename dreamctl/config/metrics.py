"""The metric names a recipe's eval.metrics, an ablate spec and `evaluate --metrics` take.

The names and what is known of each are metrics/registry.py's, which is free of numpy and torch, so the
recipe schema does not depend on the computing side of the metrics package.
"""

from __future__ import annotations

from collections.abc import Sequence

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
