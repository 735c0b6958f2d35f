"""Which evaluations share a column of compare's tables and plots: one protocol id, split further by a
label where the same id was measured against other reference data, at another image size, with another
Inception file or in another precision (`(ref 1a2b3c4d)`, `(32px)`, `(net 5e6f7a8b)`, `(precision unrecorded)`).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from typing import Any

from dreamctl.config.metrics import parse_metrics
from dreamctl.errors import ConfigError
from dreamctl.experiments.runs import EvalRecord, Run
from dreamctl.metrics.registry import INCEPTION_METRICS, METRIC_NAMES, METRICS
from dreamctl.protocol import DATA_FIELDS

NO_FEATURES = "no feature metric"  # an evaluation without FID, KID or IS values: its network does not matter


def _data_value(record: EvalRecord, name: str) -> Any:
    if name == "feature_network_sha256" and not any(
            m in INCEPTION_METRICS and "value" in e for m, e in record.metrics.items()):
        return NO_FEATURES
    return record.protocol.get(name)


def _data_key(record: EvalRecord) -> tuple[str, ...]:
    return (record.protocol_id, *(repr(_data_value(record, k)) for k in DATA_FIELDS))


def _hash_labels(values: list[Any], what: str) -> dict[str, str]:
    """repr(value) -> `<what> <hex>`, keeping the fewest hex digits (8 or more) that tell the hashes apart."""
    hashes = {v for v in values if isinstance(v, str)}
    n = 8
    while len({h[:n] for h in hashes}) < len(hashes):
        n += 4
    return {repr(v): f"{what} {v[:n]}" if isinstance(v, str) else f"{what} unrecorded" for v in values}


def _data_labels(name: str, values: list[Any]) -> dict[str, str]:
    """repr(value) -> a short label, or {} where the values need no columns of their own."""
    if name == "feature_network_sha256":
        # Evaluations without a feature metric share the column of the one network the others used;
        # only two networks' numbers are kept apart.
        used = [v for v in values if v != NO_FEATURES]
        if len({repr(v) for v in used}) < 2:
            return {}
        return {**_hash_labels(used, "net"), repr(NO_FEATURES): NO_FEATURES}
    if len({repr(v) for v in values}) < 2:
        return {}
    if name == "image_size":
        return {repr(v): "image size unrecorded" if v is None else f"{v}px" for v in values}
    if name == "precision":
        return {repr(v): "precision unrecorded" if v is None else str(v) for v in values}
    return _hash_labels(values, "ref")


def column_ids(runs: list[Run]) -> dict[tuple[str, ...], str]:
    """_data_key of every evaluation -> the id of its column group: the protocol id, plus a label of the
    DATA_FIELDS that differ only where one protocol id was measured against several references."""
    found: dict[str, dict[tuple[str, ...], EvalRecord]] = {}
    for run in runs:
        for record in run.evals:  # all checkpoints, so the metric-vs-step curves use the same ids
            found.setdefault(record.protocol_id, {}).setdefault(_data_key(record), record)
    out = {}
    for pid, by_key in found.items():
        labels = [_data_labels(f, [_data_value(r, f) for r in by_key.values()]) for f in DATA_FIELDS]
        for key in by_key:
            parts = [lab[key[i]] for i, lab in enumerate(labels, 1) if lab]
            out[key] = f"{pid} ({', '.join(parts)})" if parts else pid
    return out


def column_id(record: EvalRecord, ids: dict[tuple[str, ...], str]) -> str:
    return ids[_data_key(record)]


def latest_by_column(run: Run, ids: dict[tuple[str, ...], str]) -> dict[str, EvalRecord]:
    """column id -> the evaluation of the newest checkpoint in it (run.evals is sorted by step)."""
    return {column_id(record, ids): record for record in run.evals}


def trained_reference_notes(runs: list[Run], ids: dict[tuple[str, ...], str], shown: Collection[str]) -> list[str]:
    """A note per column shown whose reference images hold images the runs trained on (eval's ref_trained_on)."""
    found: dict[str, set[tuple[int, int]]] = {}
    for run in runs:
        for pid, record in latest_by_column(run, ids).items():
            if pid in shown and (n := record.protocol.get("ref_trained_on")):
                found.setdefault(pid, set()).add((n, record.protocol.get("ref_num", n)))
    return [f"the reference images of {pid} are images the runs trained on ({', '.join(f'{n} of {m}' for n, m in sorted(counts))}): "
            "its scores measure closeness to the training data, which memorisation improves; `evaluate --ref test` "
            "scores against held-out images" for pid, counts in found.items()]


def scale_notes(columns: list[tuple[str, str]]) -> list[str]:
    """What a reader must know of the metrics among `columns` that their names do not say (their scale notes)."""
    names = {name for _, name in columns}
    return [info.scale_note for m, info in METRICS.items() if info.scale_note is not None and m in names]


def select_columns(columns: tuple[tuple[str, str], ...], metrics: Sequence[str] | None,
                   protocols: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """The (column id, metric) columns of the protocols and metrics asked for (None: all). A protocol is named by
    its column id or by the protocol id its columns share (`ddim50-...` takes `ddim50-... (32px)` too). Asking for
    one that no run was evaluated with is an error naming those there are: a table left empty looks like no data."""
    if protocols is not None:
        ids = list(dict.fromkeys(pid for pid, _ in columns))
        base = {pid: pid.split(" (")[0] for pid in ids}
        if absent := [p for p in protocols if p not in ids and p not in base.values()]:
            close = [i for i in ids if i.startswith(absent[0])][:1] or difflib.get_close_matches(absent[0], ids, n=1)
            raise ConfigError(f"no protocol {absent[0]} (--protocol)" + (f"; did you mean {close[0]}?" if close else "")
                              + f" (protocols here: {', '.join(ids) or 'none'})")
        columns = tuple(c for c in columns if c[0] in protocols or base[c[0]] in protocols)
    if metrics is not None:
        wanted = parse_metrics(metrics)
        there = [m for m in METRIC_NAMES if any(name == m for _, name in columns)]
        if absent := [m for m in wanted if m not in there]:
            under = f" under {', '.join(protocols)}" if protocols else ""
            raise ConfigError(f"no run has an evaluation with {', '.join(absent)}{under} (--metrics); evaluated"
                              f"{' there' if protocols else ''}: {', '.join(there) or 'nothing'}")
        columns = tuple(c for c in columns if c[1] in wanted)
    return columns
