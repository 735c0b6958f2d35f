"""Read a run folder (docs/run-folder.md) into a typed, read-only record.

Only the files are read: `run.json`, `recipe.yaml`, `metrics.jsonl` and `eval/*.json`.
Nothing here imports torch, so `compare` works on a laptop holding copied run folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamctl import atomic
from dreamctl.config import Recipe
from dreamctl.errors import CheckpointError
from dreamctl.records import read_json, read_jsonl
from dreamctl.training.rundir import RunDir


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation file: the metrics of one checkpoint under one protocol."""

    protocol_id: str
    protocol: dict[str, Any]  # as recorded: the fields are protocol.py's (Sampling, SAME_SAMPLES, DATA_FIELDS)
    metrics: dict[str, dict[str, Any]]
    path: Path

    @property
    def checkpoint_step(self) -> int | None:
        step = self.protocol.get("checkpoint_step")
        return int(step) if isinstance(step, (int, float)) else None


@dataclass(frozen=True)
class Run:
    path: Path
    info: dict[str, Any]  # run.json
    recipe: Recipe
    history: tuple[dict[str, Any], ...]  # metrics.jsonl, one row per logged step
    evals: tuple[EvalRecord, ...]  # sorted by protocol id, then checkpoint step

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.path.name)

    @property
    def status(self) -> str:
        """run.json's status; `killed` for a run it says is running on this machine that no process holds
        (kill -9, out of memory, power loss: nothing was left to record the end). Run folders copied from
        another machine say what they said there."""
        status = str(self.info.get("status", "unknown"))
        if status == "running" and self.info.get("host") == atomic.HOST and not atomic.in_use(self.path):
            return "killed"
        return status

    @property
    def seed(self) -> int:
        return self.recipe.train.seed

    def total(self, key: str) -> float | int | None:
        """A number from run.json (step, images_seen, wall_time_s, ...), None when absent."""
        value = self.info.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None



def read_evals(eval_dir: Path) -> tuple[EvalRecord, ...]:
    records: dict[tuple[str, int | None], EvalRecord] = {}
    for path in sorted(eval_dir.rglob("*.json")) if eval_dir.is_dir() else ():
        if path.name.startswith("."):  # a writer's temporary file
            continue
        data = read_json(path)
        metrics = data.get("metrics")
        if not isinstance(metrics, dict):
            raise CheckpointError(f"{path}: no 'metrics' object; not an evaluation file: move it out of eval/ "
                                  "and run `dreamctl evaluate` again")
        protocol = data.get("protocol") if isinstance(data.get("protocol"), dict) else {}
        record = EvalRecord(
            protocol_id=str(data.get("protocol_id") or path.stem),
            protocol=protocol,
            metrics={k: v if isinstance(v, dict) else {"value": v} for k, v in metrics.items()},
            path=path,
        )
        records.setdefault((record.protocol_id, record.checkpoint_step), record)
    return tuple(sorted(records.values(), key=lambda r: (r.protocol_id, r.checkpoint_step or -1)))


def read_run(path: str | Path) -> Run:
    """Read RUN_DIR; CheckpointError naming the file when it is not a run folder."""
    run = RunDir(path)
    if not run.root.is_dir():
        raise CheckpointError(f"run folder {run.root} does not exist")
    for needed in (run.run_file, run.recipe_file):
        if not needed.is_file():
            raise CheckpointError(f"{run.root}: no {needed.name}; not a run folder (`dreamctl train` writes it)")
    return Run(
        path=run.root,
        info=run.info(),
        recipe=run.recipe(),
        history=tuple(read_jsonl(run.metrics_file)),
        evals=read_evals(run.eval),
    )
