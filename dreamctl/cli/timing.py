"""`--time` of `train --dry-run` and `ablate --dry-run`: the runs' own steps timed here price the steps they
have left (dreamctl.bench.estimate); one line says how long, what was timed, and what is not counted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dreamctl.cli.common import console, duration

if TYPE_CHECKING:
    from dreamctl.config import Recipe


def print_training_time(head: str, runs: list[tuple[Recipe, int, int]], device: str | None, processes: int,
                        of: str = "", extra: str = "") -> None:
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
                  f"{per_step}; medians of {rounds} steps after a warm-up; not counted: {extra}data loading, "
                  f"checkpoints, sample grids" + (", the all-reduce between processes" if processes > 1 else ""),
                  markup=False, highlight=False)
