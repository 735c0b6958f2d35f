"""How long a run would train, and its evaluations sample: its own steps timed on this device, times the steps
it has to take.

What `train --dry-run --time` and `ablate --dry-run --time` print. A training step is the training loop's
(`train_step`, through the benchmark's `bench_train`) on a random batch of the recipe's shape, so data loading,
checkpoints and sample grids are not in the estimate; nor is a multi-process run's gradient all-reduce: each
process is timed alone at its share of the batch. A sampler step is the network `sample` draws with
(inference.sampling_net) called on a batch of `sample.batch_size`: Inception features and the metrics are not in it.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field

import torch

from dreamctl.bench.sections import bench_train
from dreamctl.bench.timing import interleaved
from dreamctl.config import Recipe
from dreamctl.data.loader import rank_slice
from dreamctl.diffusion.losses import step_cost
from dreamctl.errors import RunError
from dreamctl.inference import sampling_net
from dreamctl.models import build_model
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


@dataclass(frozen=True)
class SamplingTime:
    """The network evaluations an evaluation's images take (images x sampler steps), and the median seconds of
    one per image, measured."""

    evaluations: int
    seconds_per_image: float  # of one network evaluation
    timed_calls: int  # after the warm-up
    batch_size: int
    precision: str

    @property
    def seconds(self) -> float:
        return self.evaluations * self.seconds_per_image


@dataclass
class StepTimer:
    """Median seconds per training step on `rt`'s device at each recipe's own precision, and per sampler step's
    network call, each timed once per setting that changes the work (model, resolution, one process's batch, loss
    kind, precision, compile, channels_last): an ablation's grid over a loss weight times one step, not one per
    run. `budget_s` ends a timing after the round that passes it."""

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

    def sampling_precision(self) -> str:
        return resolve_precision("auto", self.rt.device)  # `sample` and `evaluate`'s, on this device

    def network_seconds(self, recipe: Recipe) -> tuple[float, int]:
        """(median seconds of one sampler step's network call per image, calls timed): the network as `sample`
        draws with it, at `sample.batch_size`, the inference precision and `sample.compile`; timed once per
        setting that changes the work."""
        s, r = recipe.sample, recipe.data.resolution
        rt = dataclasses.replace(self.rt, precision=self.sampling_precision())
        work = json.dumps([recipe.model.model_dump(mode="json"), r, s.batch_size, rt.precision,
                           s.compile and s.compile_mode])
        if (work, "sample") not in self._timed:
            net = sampling_net(build_model(recipe.model, r), rt, s.compile_mode if s.compile else None)
            x_t = torch.randn(s.batch_size, 3, r, r, device=rt.device)
            t = torch.full((s.batch_size,), recipe.diffusion.num_timesteps // 2, device=rt.device)

            def call(_: int) -> None:
                with torch.no_grad():
                    net(x_t, t)
            timed = interleaved({"call": call}, rt.device, warmup=self.warmup, rounds=self.rounds,
                                budget_s=self.budget_s)["call"]
            self._timed[work, "sample"] = (statistics.median(timed["seconds"]) / s.batch_size, len(timed["seconds"]))
        return self._timed[work, "sample"]


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


def estimate_sampling_time(recipe: Recipe, evaluations: int, timer: StepTimer) -> SamplingTime:
    """`evaluations` network evaluations (an evaluation's images x its sampler's steps) of the network `recipe`'s
    sample section draws with, priced at the timer's time for one."""
    seconds, calls = timer.network_seconds(recipe)
    return SamplingTime(evaluations, seconds, calls, recipe.sample.batch_size, timer.sampling_precision())
