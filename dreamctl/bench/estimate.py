"""How long a run would train: its own step timed on this device, times the steps it has to train.

What `train --dry-run --time` and `ablate --dry-run --time` print. The step is the training loop's
(`train_step`, through the benchmark's `bench_train`) on a random batch of the recipe's shape, so data loading,
checkpoints and sample grids are not in the estimate; nor is a multi-process run's gradient all-reduce: each
process is timed alone at its share of the batch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from dreamctl.bench.sections import bench_train
from dreamctl.config import Recipe
from dreamctl.data.loader import rank_slice
from dreamctl.diffusion.losses import step_cost
from dreamctl.errors import RunError
from dreamctl.runtime import Runtime, resolve_precision
from dreamctl.training.loop import steps_left


@dataclass(frozen=True)
class TrainingTime:
    """The steps a run has to train per loss kind (a staged kind's early steps are standard ones), and each
    kind's median seconds per step, measured."""

    steps: dict[str, int]
    step_seconds: dict[str, float]
    timed_steps: int  # per kind, after the warm-up
    batch_size: int  # one process's
    precision: str

    @property
    def seconds(self) -> float:
        return sum(n * self.step_seconds[kind] for kind, n in self.steps.items())


@dataclass
class StepTimer:
    """Median seconds per training step on `rt`'s device at each recipe's own precision, timed once per setting
    that changes the work (model, resolution, one process's batch, loss kind, precision, compile, channels_last):
    an ablation's grid over a loss weight times one step, not one per run. `budget_s` ends a timing after the
    round that passes it."""

    rt: Runtime
    processes: int = 1
    rounds: int = 3
    warmup: int = 1
    budget_s: float = 30.0
    _timed: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rt.device.type == "cpu" and self.processes > 1:  # each would get a thread and share the cores
            raise RunError(f"--time with {self.processes} processes on the CPU: they share its cores, which timing "
                           "one process does not show; time with --nproc-per-node 1, or on the GPU")

    def precision(self, recipe: Recipe) -> str:
        return resolve_precision(recipe.train.precision, self.rt.device)

    def share(self, recipe: Recipe) -> int:
        """One process's images of the global batch (DataError for a batch that does not split, as the run's)."""
        part = rank_slice(recipe.train.batch_size, 0, self.processes)
        return part.stop - part.start

    def seconds(self, recipe: Recipe, kinds: tuple[str, ...]) -> tuple[dict[str, float], int]:
        """({kind: median seconds per step}, steps timed per kind)."""
        t = recipe.train
        rt = dataclasses.replace(self.rt, precision=self.precision(recipe))
        work = json.dumps([recipe.model.model_dump(mode="json"), recipe.data.resolution, self.share(recipe),
                           rt.precision, t.compile, t.channels_last])
        if missing := tuple(k for k in kinds if (work, k) not in self._timed):
            timed = recipe.model_copy(update={"train": t.model_copy(update={"batch_size": self.share(recipe)})})
            rows = bench_train(timed, rt, rounds=self.rounds, warmup=self.warmup, budget_s=self.budget_s,
                               kinds=missing, naive=False)["rows"]
            self._timed.update({(work, k): (rows[k]["step_ms_median"] / 1e3, rows[k]["rounds"]) for k in missing})
        return ({k: self._timed[work, k][0] for k in kinds}, min(self._timed[work, k][1] for k in kinds))


def estimate_training_time(recipe: Recipe, n: int, timer: StepTimer, done: int = 0) -> TrainingTime:
    """The steps `recipe` has left over `n` images from step `done`, priced at the timer's step times."""
    left, before = steps_left(recipe, n, done)
    kind: str = recipe.loss.kind
    start = recipe.loss.start_epoch
    staged = step_cost(kind, 0, start) != step_cost(kind, start, start)
    steps = {kind: left - before, "standard": before} if staged else {kind: left}
    steps = {k: v for k, v in steps.items() if v} or {kind: 0}
    seconds, timed = timer.seconds(recipe, tuple(steps))
    return TrainingTime(steps, seconds, timed, timer.share(recipe), timer.precision(recipe))
