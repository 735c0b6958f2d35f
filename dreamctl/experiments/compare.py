"""Compare run folders: one row per run, metrics grouped by evaluation protocol.

Numbers measured under different protocols (sampler, steps, sample count, reference set,
resize, feature network) are never put in one column: each column is (protocol id, metric),
the id followed by a short label of the reference data, the Inception file or the precision, where
one id was measured with several (experiments/columns.py). Runs that differ only
by `train.seed` and BOOKKEEPING_KEYS settings (same training data, distinct seeds) are also
aggregated into mean ± std (sample std, ddof=1). A metric without a value is `missing` with its reason, never a number.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dreamctl.config.schema import STUDY_VARIANT_NOTE
from dreamctl.experiments.columns import (
    column_ids,
    latest_by_column,
    scale_notes,
    select_columns,
    trained_reference_notes,
)
from dreamctl.experiments.runs import Run
from dreamctl.experiments.settings import differing_settings, processes, repeated_seeds, run_items, seed_groups
from dreamctl.metrics.registry import METRIC_NAMES
from dreamctl.metrics.spread import SEEDS, spread_of
from dreamctl.protocol import PROTOCOL_FIELDS, drawn_by_seed_rule

TOTALS = ("step", "images_seen", "wall_time_s", "img_per_s", "peak_memory_bytes")  # keys of run.json
DEVICE_TOTALS = ("wall_time_s", "img_per_s", "peak_memory_bytes")  # measured on the run's device
TOTAL_HEADERS = {"step": "steps", "images_seen": "images seen", "wall_time_s": "wall time",
                 "img_per_s": "img/s", "peak_memory_bytes": "peak memory"}


@dataclass(frozen=True)
class Metric:
    value: float | None = None
    std: float | None = None  # the file's own spread (KID, IS, LPIPS), or the spread over seeds
    spread: str | None = None  # what std is over: "subsets", "splits", "pairs" (metrics/spread.py) or "seeds"
    missing: str | None = None  # why there is no value
    n: int = 1  # seeds behind an aggregate value
    evaluated: bool = True  # False: the run has no evaluation under this protocol at all
    mixed_steps: tuple[int | None, ...] = ()  # an aggregate left out: its seeds' checkpoint steps differ


@dataclass(frozen=True)
class Row:
    label: str
    recipe: str
    status: str
    seeds: tuple[int, ...]
    paths: tuple[str, ...]
    settings: dict[str, Any]  # only the settings that differ between the runs compared
    totals: dict[str, float | None]  # run.json totals (means over seeds for aggregates)
    metrics: dict[tuple[str, str], Metric]  # (protocol id, metric name) -> value
    eval_steps: dict[str, tuple[int, ...]]  # protocol id -> checkpoint step(s) evaluated
    device: str = "unknown"  # cpu | cuda (run.json), "mixed" for a group: img/s and memory mean nothing across them
    processes: tuple[int, ...] = (1,)  # the process counts its sessions trained on; () for a group of other counts


@dataclass(frozen=True)
class Comparison:
    rows: tuple[Row, ...]
    aggregate: tuple[Row, ...]  # mean ± std over seeds; empty unless some runs differ only by seed
    settings: tuple[str, ...]  # the dotted keys that differ
    columns: tuple[tuple[str, str], ...]  # (protocol id, metric), grouped by protocol
    protocols: dict[str, dict[str, Any]]  # protocol id -> its description (checkpoint step removed)
    warnings: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())  # what a reader must know of the runs shown (STUDY_VARIANT_NOTE)


def _metric(name: str, entry: dict[str, Any]) -> Metric:
    if "missing" in entry:
        return Metric(missing=str(entry["missing"]))
    value = entry.get("value")
    if not finite_number(value):  # NaN (json writes it) would print as a score and poison every mean it joins
        return Metric(missing=f"no finite numeric value in the evaluation file ({value!r})")
    std = entry.get("std")
    if not finite_number(std):
        return Metric(value=float(value))
    return Metric(value=float(value), std=float(std), spread=spread_of(name, entry))


def finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _metric_key(name: str) -> tuple[int, str]:
    return (METRIC_NAMES.index(name) if name in METRIC_NAMES else len(METRIC_NAMES), name)


def _columns(runs: list[Run], ids: dict[tuple[str, ...], str]) -> tuple[tuple[str, str], ...]:
    names: dict[str, set[str]] = {}
    for run in runs:
        for pid, record in latest_by_column(run, ids).items():
            names.setdefault(pid, set()).update(record.metrics)
    return tuple((pid, m) for pid in sorted(names) for m in sorted(names[pid], key=_metric_key))


def _protocols(runs: list[Run], ids: dict[tuple[str, ...], str],
               shown: set[str]) -> tuple[dict[str, dict[str, Any]], tuple[str, ...]]:
    """One description per column id shown, and a warning when runs disagree under one."""
    found: dict[str, dict[str, Any]] = {}
    warnings = []
    for run in runs:
        for pid, record in latest_by_column(run, ids).items():
            if pid not in shown:
                continue
            desc = {k: v for k, v in record.protocol.items() if k != "checkpoint_step"}
            first = found.setdefault(pid, desc)
            clash = [k for k in PROTOCOL_FIELDS if first.get(k) != desc.get(k)]
            if clash:
                warnings.append(f"protocol {pid}: {run.name} differs on {', '.join(clash)}; check the evaluator")
            if not drawn_by_seed_rule(record.protocol):
                warnings.append(f"{record.path} drew seed {record.protocol.get('seed')}'s images as seed+i, overlapping "
                                f"seed 0's set: run `dreamctl evaluate` again to draw an independent set")
    return found, tuple(warnings)


def run_row(run: Run, settings: tuple[str, ...], columns: tuple[tuple[str, str], ...],
            ids: dict[tuple[str, ...], str]) -> Row:
    flat = run_items(run)
    latest = latest_by_column(run, ids)
    metrics = {}
    for pid, name in columns:
        record = latest.get(pid)
        if record is None:
            metrics[(pid, name)] = Metric(missing=f"{run.name} was not evaluated under protocol {pid}", evaluated=False)
        elif name not in record.metrics:
            metrics[(pid, name)] = Metric(missing=f"{name} not computed in {record.path}")
        else:
            metrics[(pid, name)] = _metric(name, record.metrics[name])
    totals = {k: run.total(k) for k in TOTALS}
    # From the totals, as a finished run's run.json has it: a failed or running run's img_per_s is its
    # last checkpoint's speed meter (recent steps of one session), another quantity.
    seen, seconds = totals["images_seen"], totals["wall_time_s"]
    totals["img_per_s"] = seen / seconds if seen is not None and seconds else None
    if totals["peak_memory_bytes"] == 0:  # what older runs recorded where they did not measure: no number
        totals["peak_memory_bytes"] = None
    return Row(
        label=run.name, recipe=run.recipe.name, status=run.status, seeds=(run.seed,),
        paths=(str(run.path),), settings={k: flat.get(k) for k in settings}, totals=totals, metrics=metrics,
        eval_steps={pid: (r.checkpoint_step,) for pid, r in latest.items() if r.checkpoint_step is not None},
        device=str(run.info.get("device") or "unknown").split(":")[0], processes=processes(run),
    )


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _group_label(rows: list[Row]) -> str:
    stripped = {re.sub(r"[_-]?seed-?\d+", "", row.label) for row in rows}
    if len(stripped) == 1 and next(iter(stripped)):
        return next(iter(stripped))
    return f"{rows[0].label} (+{len(rows) - 1})"


def aggregate_rows(rows: list[Row]) -> Row:
    """Mean ± std over runs that differ only by seed; missing values are left out and counted. Values
    measured at different checkpoint steps are not averaged: such a mean would describe no model."""
    metrics = {}
    for key in rows[0].metrics:
        found = [r.metrics[key] for r in rows]
        values = [m.value for m in found if m.value is not None]
        at = sorted({r.eval_steps.get(key[0], (None,))[0] for r in rows if r.metrics[key].value is not None},
                    key=lambda step: -1 if step is None else step)
        if not values:
            reasons = sorted({m.missing or "" for m in found})
            metrics[key] = Metric(missing="; ".join(reasons), evaluated=any(m.evaluated for m in found))
        elif len(at) > 1:
            metrics[key] = Metric(missing=f"not averaged: the seeds' newest evaluations are at different "
                                          f"checkpoints (steps {', '.join(map(str, at))}); evaluate the lagging "
                                          "ones at their newest checkpoint (`dreamctl evaluate RUN`)",
                                  mixed_steps=tuple(at))
        else:
            mean, std = _mean_std(values)
            metrics[key] = Metric(value=mean, std=std, spread=None if std is None else SEEDS, n=len(values))
    devices, counts = {r.device for r in rows}, {r.processes for r in rows}
    device = devices.pop() if len(devices) == 1 else "mixed"
    procs = counts.pop() if len(counts) == 1 else ()
    # Speed and memory of CPU and GPU seeds (the CPU's is the process's resident memory), or of seeds on 1 and 8
    # GPUs, average to nothing.
    kept = TOTALS if device != "mixed" and procs else tuple(k for k in TOTALS if k not in DEVICE_TOTALS)
    totals = {k: _mean_std([r.totals[k] for r in rows if r.totals[k] is not None])[0] if k in kept else None
              for k in TOTALS}
    steps: dict[str, tuple[int, ...]] = {}
    for row in rows:
        for pid, s in row.eval_steps.items():
            steps[pid] = tuple(sorted(set(steps.get(pid, ()) + s)))
    statuses = sorted({r.status for r in rows})
    return Row(
        label=_group_label(rows), recipe=rows[0].recipe, status="/".join(statuses),
        seeds=tuple(s for r in rows for s in r.seeds), paths=tuple(p for r in rows for p in r.paths),
        settings={k: v if all(r.settings[k] == v for r in rows) else "(varies)"
                  for k, v in rows[0].settings.items() if k != "train.seed"},
        totals=totals, metrics=metrics, eval_steps=steps, device=device, processes=procs,
    )


def unique_labels(names: list[str], paths: list[str]) -> list[str]:
    """Two runs of one name (a copied folder keeps its run.json name) are told apart by their paths."""
    return [f"{name} ({path})" if names.count(name) > 1 else name for name, path in zip(names, paths)]


def run_labels(runs: list[Run]) -> list[str]:
    """The labels compare's rows give these runs (figures use them too)."""
    return unique_labels([run.name for run in runs], [str(run.path) for run in runs])


def _unique_labels(rows: list[Row]) -> list[Row]:
    labels = unique_labels([r.label for r in rows], [r.paths[0] for r in rows])
    return [dataclasses.replace(r, label=label) for r, label in zip(rows, labels)]


def compare_runs(runs: list[Run], metrics: Sequence[str] | None = None,
                 protocols: Sequence[str] | None = None) -> Comparison:
    """The comparison of `runs`, its metric columns limited to `metrics` and `protocols` (select_columns)."""
    settings = differing_settings(runs)
    ids = column_ids(runs)
    columns = select_columns(_columns(runs, ids), metrics, protocols)
    shown = {pid for pid, _ in columns}
    described, warnings = _protocols(runs, ids, shown)
    rows = _unique_labels([run_row(run, settings, columns, ids) for run in runs])
    repeats = [f"{rows[i].label} repeats seed {runs[i].seed} of {rows[j].label} (same settings and data): "
               "a row of its own, not averaged in as another seed" for i, j in repeated_seeds(runs).items()]
    groups = seed_groups(runs)
    aggregate = [aggregate_rows([rows[i] for i in g]) for g in groups] if any(len(g) > 1 for g in groups) else []
    mixed = [f"{row.label}: {name} @ {pid} {m.missing}" for row in aggregate
             for (pid, name), m in row.metrics.items() if m.mixed_steps]
    valued = [c for c in columns if any(row.metrics[c].value is not None for row in rows)]
    notes = (*((STUDY_VARIANT_NOTE,) if any(run.recipe.loss.kind == "dream_conservative" for run in runs) else ()),
             *trained_reference_notes(runs, ids, shown), *scale_notes(valued))
    return Comparison(tuple(rows), tuple(_unique_labels(aggregate)), settings, columns, described,
                      (*warnings, *repeats, *mixed), notes)
