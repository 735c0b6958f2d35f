"""eval/<protocol_id>.json files: writing an evaluation beside the earlier ones of its protocol, keeping the
metrics an earlier file of the same samples holds that this one did not compute (docs/run-folder.md)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from dreamctl import atomic
from dreamctl.errors import CheckpointError, DreamctlWarning
from dreamctl.metrics.registry import INCEPTION_METRICS, METRICS
from dreamctl.protocol import same_samples
from dreamctl.records import read_json


def _carry_over(previous: dict[str, Any] | None, record: dict[str, Any]) -> None:
    """Keep the metrics of an earlier file for the same samples that this call did not ask for, each with
    its settings (protocol[name], the reference cache) and when and with which libraries it was computed."""
    if previous is None:
        return
    old, new = previous.get("protocol", {}), record["protocol"]
    if not same_samples(old, new):
        return
    old_weights = previous.get("weights", {})
    for name, entry in previous.get("metrics", {}).items():
        if name in record["metrics"]:
            continue
        needs = METRICS[name].weights if name in METRICS else ()
        files = {k: v for k, v in old_weights.items() if k in needs}  # the hashes of its weight files, kept with it
        if name not in INCEPTION_METRICS:
            record["weights"].update(files)
        elif "value" in entry:  # fid, kid and is share one network, which the protocol names for all three
            if new.get("feature_network_sha256") is None:  # no feature network ran now: adopt the earlier one
                new["feature_network_sha256"] = old.get("feature_network_sha256")
                record["weights"].update(files)
            elif new["feature_network_sha256"] != old.get("feature_network_sha256"):
                continue  # measured with other weights: dropped rather than mixed
        if name in old and name not in new:  # its settings: KID's subsets, IS's splits, ...
            new[name] = old[name]
        if name in INCEPTION_METRICS and "reference_cache" in old and "reference_cache" not in new:
            new["reference_cache"] = old["reference_cache"]
        computed = {"created": previous.get("created"), "versions": previous.get("versions")}
        record["metrics"][name] = {**entry, "carried_from": entry.get("carried_from", computed)}


def _readable(path: Path) -> dict[str, Any] | None:
    """An earlier evaluation file, or None: absent, or damaged (a hand edit, a disk error) and then set aside as
    `*.corrupt` with a warning. Found at the end of an evaluation, it must not cost the scores just computed."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except CheckpointError:  # its message says to move the file aside: done here
        aside = atomic.unused_path(path.with_name(path.name + ".corrupt"))
        path.rename(aside)
        warnings.warn(f"{path} cannot be read as an evaluation file: set aside as {aside.name}, and the new "
                      "evaluation written", DreamctlWarning, stacklevel=3)
        return None


def write_eval(eval_dir: Path, record: dict[str, Any]) -> tuple[Path, ...]:
    """`<id>.json` holds the newest checkpoint's evaluation; with more than one step, `<id>@step<N>.json` each."""
    pid, step = record["protocol_id"], record["protocol"]["checkpoint_step"]
    eval_dir.mkdir(parents=True, exist_ok=True)
    main, mine = eval_dir / f"{pid}.json", eval_dir / f"{pid}@step{step}.json"
    previous = _readable(main)
    prev_step = (previous or {}).get("protocol", {}).get("checkpoint_step")
    earlier = _readable(mine)
    _carry_over(earlier if earlier is not None else (previous if prev_step == step else None), record)
    written = []
    if previous is not None and prev_step != step:
        kept = eval_dir / f"{pid}@step{prev_step}.json"
        if not kept.is_file():
            atomic.write_json(kept, previous)  # history for compare's metric-vs-step plots
            written.append(kept)
    if any(eval_dir.glob(f"{pid}@step*.json")):
        atomic.write_json(mine, record)
        written.append(mine)
    if previous is None or not isinstance(prev_step, int) or step >= prev_step:
        atomic.write_json(main, record)
        written.append(main)
    return tuple(written)
