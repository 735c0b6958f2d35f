"""`--time` of `train --dry-run` and `ablate --dry-run`: the runs' own steps timed here price the steps they
have left, and the sampler steps of their evaluations (dreamctl.bench.estimate); one line each says how long,
what was timed, and what is not counted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dreamctl.cli.common import console, duration

if TYPE_CHECKING:
    from dreamctl.config import Recipe


def print_training_time(head: str, runs: list[tuple[Recipe, int, int]], device: str | None, processes: int,
                        of: str = "") -> None:
    """`runs`: (recipe, images it trains on, steps done) each; `of` names them (" of 3 runs")."""
    from dreamctl import runtime
    from dreamctl.bench import machine
    from dreamctl.bench.estimate import StepTimer, estimate_training_time

    rt = runtime.setup("auto", device)  # each recipe is timed at its own precision
    timer = StepTimer(rt, processes)
    with console.status(f"timing the steps on {rt.device}"):
        times = [estimate_training_time(recipe, n, timer, done) for recipe, n, done in runs]
    steps = sorted({(k, t.batch_size, t.precision, s) for t in times for k, s in t.step_seconds.items()})
    per_step = ", ".join(f"{s:.3g} s per {k} step ({b} images per process, {p})" for k, b, p, s in steps)
    rounds = min(t.timed_steps for t in times)
    total = sum(n for t in times for n in t.steps.values())
    console.print(f"{head}about {duration(sum(t.seconds for t in times))} for {total:,} steps{of} on "
                  f"{machine(rt)['device']}: "
                  f"{per_step}; medians of {rounds} steps after a warm-up; not counted: data loading, "
                  f"checkpoints, sample grids" + (", the all-reduce between processes" if processes > 1 else ""),
                  markup=False, highlight=False)


def print_sampling_time(head: str, evals: list[tuple[Recipe, int]], device: str | None) -> None:
    """`evals`: (recipe with the evaluation's sample section, its network evaluations: images x sampler steps)."""
    from dreamctl import runtime
    from dreamctl.bench import machine
    from dreamctl.bench.estimate import StepTimer, estimate_sampling_time

    rt = runtime.setup("auto", device)
    timer = StepTimer(rt)
    with console.status(f"timing the sampler's network on {rt.device}"):
        times = [estimate_sampling_time(recipe, n, timer) for recipe, n in evals]
    calls = sorted({(t.batch_size, t.precision, t.seconds_per_image) for t in times})
    per_call = ", ".join(f"{s:.3g} s per image per step (batches of {b}, {p})" for b, p, s in calls)
    total = sum(t.evaluations for t in times)
    console.print(f"{head}about {duration(sum(t.seconds for t in times))} to sample {total:,} network evaluations "
                  f"(images x sampler steps) of {len(evals)} evaluation{'s' * (len(evals) > 1)} on "
                  f"{machine(rt)['device']}: {per_call}; medians of {min(t.timed_calls for t in times)} calls after "
                  "a warm-up; not counted: Inception features and the metrics, reference statistics",
                  markup=False, highlight=False)
