"""What the "±" after a metric is a spread over, so that no reader takes it for an error bar.

Evaluation files store a metric's spread as "std" and name what it is over in "spread": KID's
random subsets, IS's splits, LPIPS's single pair distances (the spread of the distances
themselves, far wider than the uncertainty of their mean), and in compare's seed groups the
seeds. Which one a metric's std is over is the registry's (metrics/registry.py); files written
before "spread" existed meant the same, so `spread_of` falls back on it. Free of numpy and torch:
compare imports it on a laptop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dreamctl.metrics.registry import METRICS

SEEDS = "seeds"  # compare's mean rows: sample std over runs that differ only by seed
_WORDS = {"subsets": "std over random subsets", "splits": "std over splits",
          "pairs": "std of single pair distances, not an error bar", SEEDS: "sample std over seeds"}


def spread_of(name: str, entry: Mapping[str, Any]) -> str | None:
    """What `entry["std"]` is over; None when the entry has no std."""
    if entry.get("std") is None:
        return None
    known = METRICS[name].spread if name in METRICS else None
    return str(entry.get("spread") or known or "unrecorded")


def spread_legend(spreads: Iterable[tuple[str, str]]) -> str:
    """One line saying what ± means for each (metric, spread) shown, e.g.
    `± is: kid std over random subsets; lpips std of single pair distances, not an error bar`."""
    by_metric: dict[str, list[str]] = {}
    for name, spread in spreads:
        words = _WORDS.get(spread, f"std over {spread}")
        if words not in by_metric.setdefault(name, []):
            by_metric[name].append(words)
    if not by_metric:
        return ""
    return "± is: " + "; ".join(f"{name} {' / '.join(words)}" for name, words in by_metric.items())
