"""How long a run would train: the recipe's own step timed on this device, times the steps it has to train.

What `train --dry-run --time` prints. The step is the training loop's (`train_step`, through the benchmark's
`bench_train`) on a random batch of the recipe's shape, so data loading, checkpoints and sample grids are not in
the estimate; nor is a multi-process run's gradient all-reduce: each process is timed alone at its share of the
batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamctl.config import Recipe
from dreamctl.diffusion.losses import step_cost
from dreamctl.runtime import Runtime
from dreamctl.training.loop import steps_left

from dreamctl.bench.sections import bench_train


@dataclass(frozen=True)
class TrainingTime:
    """The steps a run has to train per loss kind (a staged kind's early steps are standard ones), and each
    kind's median seconds per step, measured."""

    steps: dict[str, int]
    step_seconds: dict[str, float]
    timed_steps: int  # per kind, after the warm-up
    batch_size: int  # one process's

    @property
    def seconds(self) -> float:
        return sum(n * self.step_seconds[kind] for kind, n in self.steps.items())


def estimate_training_time(recipe: Recipe, n: int, rt: Runtime, processes: int = 1, *, rounds: int = 3,
                           warmup: int = 1, budget_s: float = 30.0) -> TrainingTime:
    """Time the steps of `recipe` over `n` images on `rt`'s device (one process's share of the batch when
    `processes` > 1) and price the run with them. `budget_s` ends the timing after the round that passes it."""
    left, before = steps_left(recipe, n)
    kind, start = recipe.loss.kind, recipe.loss.start_epoch
    staged = step_cost(kind, 0, start) != step_cost(kind, start, start)
    steps = {kind: left - before, "standard": before} if staged else {kind: left}
    steps = {k: v for k, v in steps.items() if v} or {kind: 0}
    share = recipe.train.batch_size // processes  # the dry run has refused a batch that does not split
    timed = recipe.model_copy(update={"train": recipe.train.model_copy(update={"batch_size": share})})
    rows = bench_train(timed, rt, rounds=rounds, warmup=warmup, budget_s=budget_s, kinds=tuple(steps),
                       naive=False)["rows"]
    return TrainingTime(steps, {k: rows[k]["step_ms_median"] / 1e3 for k in steps},
                        timed_steps=min(row["rounds"] for row in rows.values()), batch_size=share)
