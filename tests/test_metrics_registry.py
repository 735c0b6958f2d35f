"""metrics/registry.py: every metric is described once, and every reader of metric facts finds each metric there."""

from __future__ import annotations

from pathlib import Path

from dreamctl.metrics import weights
from dreamctl.metrics.registry import INCEPTION_METRICS, METRIC_NAMES, METRICS
from run_folders import P50, write_eval, write_run


def test_every_metric_is_described_and_every_weight_file_names_known_metrics() -> None:
    """A weight file naming a metric that does not exist would never be required by any (a typo, a rename)."""
    assert all(info.describe.strip() and info.name == name for name, info in METRICS.items())
    assert {m for f in weights.REGISTRY.values() for m in f.used_by} <= set(METRIC_NAMES)
    assert INCEPTION_METRICS == ("fid", "kid", "is")
    assert METRICS["lpips"].weights == (weights.ALEXNET, weights.LPIPS_LINEAR) and METRICS["swd"].weights == ()


def test_every_metric_gets_a_compare_column_in_table_order(tmp_path: Path) -> None:
    from dreamctl.experiments.compare import compare_runs
    from dreamctl.experiments.runs import read_run

    run = write_run(tmp_path, "a", recipe="tiny")
    write_eval(run, P50, 50, 200, {m: {"value": 1.0} for m in reversed(METRIC_NAMES)})
    assert compare_runs([read_run(run)]).columns == tuple((P50, m) for m in METRIC_NAMES)


def test_evaluate_describes_every_metric_with_its_recorded_settings() -> None:
    from dreamctl.cli.evaluate import describe

    protocol = {"kid": {"num_subsets": 100}, "is": {"splits": 10}, "swd": {"patch": 7}}
    for name in METRIC_NAMES:
        text = describe(name, {"value": 1.0}, protocol)
        assert text and "{" not in text and "?" not in text, name
    assert "100 subsets" in describe("kid", {"value": 1.0}, protocol)


def test_every_metric_in_the_registry_is_computed() -> None:
    """fid, kid and is in the one feature pass, each other metric by its own function."""
    from dreamctl.metrics.image_sets import ONE_BY_ONE

    assert sorted((*INCEPTION_METRICS, *ONE_BY_ONE)) == sorted(METRIC_NAMES)
