"""`dreamctl train`: start a run from a recipe (or --dry-run: show what it would do)."""

from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import typer

from dreamctl.cli import options
from dreamctl.cli.common import console, speaks
from dreamctl.cli.launch import launch
from dreamctl.cli.progress import run_training
from dreamctl.config import Recipe, load_recipe, recipe_to_yaml, set_args
from dreamctl.errors import DreamctlWarning, RunError

EXAMPLES = """\b
Examples:
  dreamctl train --recipe tiny --data data/synth32 --run-dir runs/tiny
  dreamctl train --recipe conservative --dry-run        # resolved recipe, parameters, cost
  dreamctl train --recipe conservative --data data/celeba64 --run-dir runs/cons --nproc-per-node 8"""  # under --help; "\\b": not rewrapped

def command(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe: a built-in name (dreamctl/recipes/NAME.yaml) or a YAML path."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder (from prepare-data)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder [default: runs/RECIPE-TIME]."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a recipe key: section.key=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and the cost; train nothing."),
    time_it: bool = typer.Option(False, "--time", help="With --dry-run and data: time a few of the run's steps on "
                                 "this device and estimate how long it trains."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Start this many processes with torchrun."),
    device: options.Device = None,
) -> None:
    """Train a recipe on prepared data into a run folder."""
    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.path={data.resolve()}")
    resolved = load_recipe(recipe, overrides)
    if time_it and not (dry_run and resolved.data.path):
        raise RunError("--time goes with --dry-run and --data (the steps to time depend on the images): "
                       "add what is missing")
    if time_it and "WORLD_SIZE" in os.environ:
        raise RunError("--time times one process: run `dreamctl train --dry-run --time --nproc-per-node N` "
                       "without torchrun (it times one process's share of the batch)")
    if dry_run:  # under torchrun: once per node, for the job's process count
        if speaks():
            processes = int(os.environ.get("WORLD_SIZE", nproc_per_node))
            n = _dry_run(resolved, processes)
            if time_it and n is not None:
                from dreamctl.cli.timing import print_training_time

                print_training_time("time          ", [(resolved, n, 0)], device, processes)
        return
    if run_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # each process would read its own clock, and another node's clock may say another second
        raise RunError("under torchrun every process must be given the same run folder: add --run-dir runs/NAME "
                       "(the --nproc-per-node shortcut picks one for you)")
    run_dir = run_dir or Path("runs") / f"{resolved.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    from dreamctl import runtime
    from dreamctl.training.rundir import RunDir

    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        from dreamctl.training.session import check_shards, check_start

        runtime.check_device(device)  # the cheapest check first: the shards' hashes take seconds
        check_start(resolved, RunDir(run_dir), nproc_per_node)  # bad data, batch or folder: once, here, not per worker
        check_shards(resolved)
        args = ["train", "--recipe", recipe, "--run-dir", str(run_dir), *set_args(overrides),
                *runtime.device_args(device)]
        raise typer.Exit(launch(nproc_per_node, args))  # the workers' exit code is ours

    from dreamctl.training.session import start_run

    run = RunDir(run_dir)
    rt = runtime.setup(resolved.train.precision, device)
    run_training(run.root, rt, functools.partial(start_run, resolved, run, rt))


def _dry_run(recipe: Recipe, processes: int) -> int | None:
    """Print the resolved recipe, its size and cost; the number of images it trains on (None: no data given)."""
    from dreamctl.data.loader import rank_slice
    from dreamctl.diffusion.losses import step_cost
    from dreamctl.models import build_model, count_parameters

    share = rank_slice(recipe.train.batch_size, 0, processes)  # the run would refuse a batch that does not split

    console.print(recipe_to_yaml(recipe), markup=False, highlight=False)
    params = count_parameters(build_model(recipe.model, recipe.data.resolution))
    kind, start = recipe.loss.kind, recipe.loss.start_epoch
    calls, units = step_cost(kind, start, start)
    early = step_cost(kind, 0, start).forward_units
    note = f" ({early} before loss.start_epoch)" if early != units else ""
    about = f"  ({recipe.description})" if recipe.description else ""
    console.print(f"recipe        {recipe.name}{about}", markup=False)
    console.print(f"parameters    {params:,} ({params / 1e6:.2f}M)", markup=False)
    if processes > 1:
        console.print(f"processes     {processes}, each {share.stop - share.start} images of the global batch of "
                      f"{recipe.train.batch_size}", markup=False)
    console.print(f"loss          {recipe.loss.kind}: {calls} model forward call(s) per step, "
                  f"{units} forward units per step{note} (a backward counts as 2)", markup=False)
    if recipe.data.path:
        from dreamctl.data.shards import split_size
        from dreamctl.training.loop import idle_rectification, train_cost

        n = split_size(recipe.data.path, recipe.data.split, recipe.data.limit)  # what training would open
        steps, seen, forwards = train_cost(recipe, n)
        console.print(f"schedule      {n:,} images, {steps:,} steps of {recipe.train.batch_size} "
                      f"= {seen:,} images seen, {forwards:,} image forward units in all", markup=False)
        if idle := idle_rectification(recipe, n):
            warnings.warn(idle, DreamctlWarning, stacklevel=2)
        return n
    return None
