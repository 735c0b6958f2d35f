"""The metric names a recipe's eval.metrics, an ablate spec and `evaluate --metrics` take.

Here, below everything that reads them, so the recipe schema does not depend on the metrics package;
which weight files each one needs is metrics/weights.py's METRIC_WEIGHTS.
"""

from __future__ import annotations

from collections.abc import Sequence

from dreamctl.errors import ConfigError

METRIC_NAMES = ("fid", "kid", "is", "lpips", "swd", "pixel_fd")  # in the order tables and files show them
# What a table's reader must know of a metric's column that its name does not say (compare's notes).
SCALE_NOTES = {"kid": "kid is the raw MMD² of clean-fid (papers often print it ×10³)",
               "lpips": "lpips is the diversity of the generated images (mean LPIPS over random pairs of them; "
                        "higher is more varied, not closer to the data)"}


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
