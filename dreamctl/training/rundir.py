"""The run folder (docs/run-folder.md): recipe, run.json, metrics.jsonl, lock."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dreamctl import atomic
from dreamctl.config import Recipe, recipe_from_file, recipe_to_yaml
from dreamctl.data.shards import manifest_sha256, read_manifest
from dreamctl.errors import CheckpointError, ConfigError, DataError, RunError
from dreamctl.records import jsonl_values, read_json

# What a run folder holds before its recipe.yaml is written: the lock, run.json and the empty
# subfolders of a `train` killed while it created the folder, which a new `train` may take over,
# the temporary file of run.json or recipe.yaml that the kill cut short (the next write clears it),
# and a writability probe the kill left (atomic.check_writable's, in the folder or its subfolders).
CREATE_LEFTOVERS = frozenset({atomic.LOCK, "run.json", "checkpoints", "samples"})
CREATE_WRITES = frozenset({"run.json", "recipe.yaml"})


def _left_by_create(path: Path) -> bool:
    if atomic.temp_target(path.name) in CREATE_WRITES or atomic.is_probe(path):
        return True
    return path.name in CREATE_LEFTOVERS and not (path.is_dir() and any(not atomic.is_probe(p) for p in path.iterdir()))


class RunDir:
    """Paths of one run folder. Creating or reading files is explicit; nothing happens on construction."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.recipe_file = self.root / "recipe.yaml"
        self.run_file = self.root / "run.json"
        self.metrics_file = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.samples = self.root / "samples"
        self.eval = self.root / "eval"

    def exists(self) -> bool:
        return self.recipe_file.is_file()

    def check_new(self) -> None:
        """RunError unless the folder is new, empty, or holds only what a `train` killed while creating
        it left (CREATE_LEFTOVERS): a run goes into no folder that holds a run or anything else."""
        if self.exists() and self.run_file.is_file():
            raise RunError(f"{self.root} already holds a run: continue it with `dreamctl resume {self.root}` "
                           "or choose another --run-dir")
        if not self.root.is_dir():
            return  # absent (made by create), or a file, which the writability check names
        if other := atomic.others_in(self.root, _left_by_create):
            raise RunError(f"{self.root} holds files that are not a new run's ({other}): a run starts in a new or "
                           "empty folder; choose another --run-dir")

    def create(self, recipe: Recipe, info: dict[str, Any]) -> None:
        """Start a new run; refuses a folder that already holds one (nothing is overwritten)."""
        self.check_new()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (self.checkpoints, self.samples):
            sub.mkdir(exist_ok=True)
        # The identity first: recipe.yaml is what makes the folder a run (resume, sample and evaluate need
        # a run_id), so a kill between the two leaves a folder `train` may still start, never an anonymous run.
        self.update_info({"run_id": uuid.uuid4().hex, "status": "created",
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          **info})
        atomic.write_text(self.recipe_file, recipe_to_yaml(recipe))

    def recipe(self) -> Recipe:
        if not self.root.exists():
            raise CheckpointError(f"run folder {self.root} does not exist; give a folder that `dreamctl train --run-dir` "
                                  "wrote")
        restore = ("restore it from a copy; each checkpoint holds the recipe it was trained with "
                   "(torch.load(CKPT, weights_only=True)['recipe'])")
        if not self.exists() and (self.run_file.is_file() or self.checkpoints.is_dir()):
            raise CheckpointError(f"{self.recipe_file} is missing, the run's record of its settings: {restore}")
        if not self.exists():
            raise CheckpointError(f"{self.root} is not a run folder (no recipe.yaml); "
                                  "create one with `dreamctl train --run-dir`")
        try:
            return recipe_from_file(self.recipe_file)
        except ConfigError as err:  # the run's record of its settings, not a file the user means to write
            if hasattr(err, "add_note"):  # Python 3.11+; the CLI prints notes after the message
                err.add_note(f"it is the run's record of its settings: {restore}")
            raise

    def info(self) -> dict[str, Any]:
        return read_json(self.run_file) if self.run_file.is_file() else {}

    def check_own(self, path: Path, run_id: str | None) -> None:
        """Refuse a checkpoint another run wrote (copied in by mistake): resumed, sampled or scored, it would pass
        for this run's. Checkpoints from before run ids carry none (None), and pass."""
        own = self.run_id()
        if run_id is not None and run_id != own:
            raise CheckpointError(f"checkpoint {path} was written by run {run_id}, not by this one "
                                  f"({own}): move it out of {self.checkpoints}")

    def check_reached(self, has_checkpoints: bool) -> None:
        """Refuse a run whose run.json says it reached a step but whose checkpoints are gone."""
        reached = self.info().get("step", 0)  # written with each checkpoint
        if reached and not has_checkpoints:
            raise CheckpointError(f"{self.run_file} says the run reached step {reached} but {self.checkpoints} holds "
                                  "no checkpoint: put the checkpoint files back (resuming would start again from step "
                                  "0 and rewrite the run's log), or start a new run with `dreamctl train`")

    def run_id(self) -> str:
        """What tells this run from any other, wherever its folder moves (sample folders record it)."""
        info = self.info()
        if info.get("run_id"):
            return info["run_id"]
        if not info.get("created"):
            raise CheckpointError(f"{self.run_file} is missing or holds no run_id: restore it from a copy "
                                  "(it names the run that its sample folders were drawn from)")
        return f"{info.get('name')}@{info['created']}"  # runs made before run_id

    def check_data(self, data_dir: Path, fix: str) -> None:
        """Refuse a prepared folder whose content (manifest hash) is not the data this run trained on."""
        trained_on = self.info().get("data_manifest_sha256")
        if trained_on and manifest_sha256(read_manifest(data_dir)) != trained_on:
            raise DataError(f"{data_dir} holds other data than this run trained on (content hash in "
                            f"{self.run_file}); {fix}")

    def update_info(self, changes: dict[str, Any]) -> None:
        atomic.write_json(self.run_file, {**self.info(), **changes})

    def append_metrics(self, record: dict[str, Any]) -> None:
        with atomic.naming(self.metrics_file), open(self.metrics_file, "a") as f:  # a cut line: metrics() drops it
            f.write(json.dumps(record) + "\n")

    def sync_metrics(self) -> None:
        """metrics.jsonl on disk before a checkpoint is: a power cut must not keep the checkpoint and lose
        the log lines before it, which resume would then never write again (a silent gap in the log)."""
        if self.metrics_file.is_file():
            atomic.fsync(self.metrics_file)
            atomic.fsync(self.root)  # its name too, the first time: a new file's entry is the folder's

    def metrics(self) -> list[dict[str, Any]]:
        """metrics.jsonl's records (a cut last line dropped), each checked to hold its step: resume reads
        them all before it changes anything, as it rewrites the log from them."""
        records = []
        for number, record in jsonl_values(self.metrics_file):
            # Every line dreamctl writes has its step; one without could be neither kept nor dropped by
            # truncate_metrics, and rewriting the log without it would lose the line.
            if not isinstance(record, dict) or type(record.get("step")) is not int:  # not a bool either
                raise CheckpointError(f'{self.metrics_file} line {number} is not a record with a "step" (dreamctl '
                                      "writes one per logged step); remove or repair that line")
            records.append(record)
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past `after_step` (logged after the checkpoint a resume starts from)."""
        kept = [record for record in self.metrics() if record["step"] <= after_step]
        if self.metrics_file.is_file():
            atomic.write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def set_aside_drawn_after(self, step: int) -> list[Path]:
        """Move the sample folders and evaluation files of checkpoints after `step` to
        set-aside/after-step-<step>/, kept for inspection. Resume went back to `step` past corrupt newer
        checkpoints: those the images were drawn from are gone, and the checkpoints written again under
        the same steps may hold other weights (resumed with an override), which a folder or evaluation
        keyed by step would not tell apart. Anything whose step cannot be read stays where it is."""
        found = [(d, d / "sample.json") for d in self.samples.iterdir() if d.is_dir()] if self.samples.is_dir() else []
        found += [(f, f) for f in sorted(self.eval.glob("*.json"))] if self.eval.is_dir() else []
        moved = []
        for item, record in found:
            drawn_at = _checkpoint_step(record)
            if drawn_at is not None and drawn_at > step:
                dest = atomic.unused_path(self.root / "set-aside" / f"after-step-{step}" / item.parent.name / item.name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                moved.append(item.rename(dest))
        return moved

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder while training (released when the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic.exclusive(self.root, lambda pid: RunError(
                f"{self.root} is in use by another trainer (pid {pid}); wait for it to finish or stop it first")):
            yield


def _checkpoint_step(record: Path) -> int | None:
    """The checkpoint_step a sample.json or an evaluation file records; None when it records none or does
    not parse (not for resume to judge: sample and evaluate name such a file when they read it)."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    fields = data.get("protocol", data) if isinstance(data, dict) else None
    step = fields.get("checkpoint_step") if isinstance(fields, dict) else None
    return step if type(step) is int else None
