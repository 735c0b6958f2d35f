"""`dreamctl resume`: continue a run from its newest readable checkpoint."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import typer

from dreamctl.cli import options
from dreamctl.cli.progress import run_training
from dreamctl.config.keys import RESUMABLE_TEXT

EXAMPLES = """\b
Examples:
  dreamctl resume runs/tiny
  dreamctl resume runs/tiny --set train.epochs=30 --set optim.lr=1e-4
  dreamctl resume runs/tiny --data /fast/disk/synth32   # the run's data, moved"""  # under --help; "\\b": not rewrapped

def command(
    run_dir: Path = typer.Argument(..., help="The run folder to continue."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Change a setting that does not alter the "
                                   f"past: {RESUMABLE_TEXT}."),
    data: Optional[Path] = typer.Option(None, "--data", help="Where the run's prepared data is now, if it moved "
                                        "(its content is checked against the run's); --set data.path=DIR as well."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Start this many processes with torchrun."),
    device: options.Device = None,
) -> None:
    """Continue a run from its newest valid checkpoint."""
    from dreamctl import runtime
    from dreamctl.cli.launch import launch
    from dreamctl.config import set_args
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import check_resume, check_shards, resume_run, resumed_recipe

    run = RunDir(run_dir)
    set_ = [*set_, *([f"data.path={data.resolve()}"] if data is not None else [])]
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        runtime.check_device(device)  # the cheapest check first: the shards' hashes take seconds
        check_shards(check_resume(run, set_, nproc_per_node))  # bad overrides, data, batch: once, here
        args = ["resume", str(run_dir), *set_args(list(set_)), *runtime.device_args(device)]
        raise typer.Exit(launch(nproc_per_node, args))  # the workers' exit code is ours
    recipe = resumed_recipe(run, set_)  # refuses bad overrides before anything starts
    rt = runtime.setup(recipe.train.precision, device)
    run_training(run.root, rt, functools.partial(resume_run, run, rt, set_), resuming=True)
