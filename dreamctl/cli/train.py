"""`dreamctl train`: start a run from a recipe (or --dry-run: show what it would do)."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from dreamctl.cli.common import console
from dreamctl.cli.progress import run_training
from dreamctl.config import flat_items, load_recipe, recipe_to_yaml
from dreamctl.diffusion.losses import STEP_COST


def command(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (recipes/NAME.yaml) or path."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder (from prepare-data)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder [default: runs/RECIPE-TIME]."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and the cost; train nothing."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Start this many processes with torchrun."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda [default: cuda if available]."),
) -> int:
    """Train a recipe on prepared data into a run folder."""
    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.path={data.resolve()}")
    resolved = load_recipe(recipe, overrides)
    if dry_run:
        return _dry_run(resolved)
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(nproc_per_node)

    from dreamctl import runtime
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import start_run

    run = RunDir(run_dir or Path("runs") / f"{resolved.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    rt = runtime.setup(resolved.train.precision, device)
    run_training(run.root, rt, functools.partial(start_run, resolved, run, rt))
    return 0


def _dry_run(recipe) -> int:
    from dreamctl.models import build_model, count_parameters

    console.print(recipe_to_yaml(recipe), markup=False, highlight=False)
    params = count_parameters(build_model(recipe.model, recipe.data.resolution))
    calls, units = STEP_COST[recipe.loss.kind]
    note = " (3 before loss.start_epoch)" if recipe.loss.kind == "dream_conservative" else ""
    console.print(f"recipe        {recipe.name}  ({recipe.description})", markup=False)
    console.print(f"parameters    {params:,} ({params / 1e6:.2f}M)", markup=False)
    console.print(f"loss          {recipe.loss.kind}: {calls} model forward call(s) per step, "
                  f"{units} forward units per step{note} (a backward counts as 2)", markup=False)
    items = flat_items(recipe)
    if items["data.path"]:
        from dreamctl.data.loader import open_split
        from dreamctl.training.loop import total_steps

        n = len(open_split(recipe.data.path, recipe.data.split, recipe.data.limit))
        steps = total_steps(recipe, n)
        console.print(f"schedule      {n:,} images, {steps:,} steps of {recipe.train.batch_size} "
                      f"= {steps * recipe.train.batch_size:,} images seen", markup=False)
    return 0


def _launch_torchrun(nproc: int) -> int:
    """Re-run this very command under torchrun (the --nproc-per-node shortcut)."""
    import subprocess

    args = [a for a in sys.argv[1:] if not a.startswith("--nproc-per-node")]
    if "--nproc-per-node" in sys.argv:  # "--nproc-per-node N" form: drop its value too
        i = sys.argv.index("--nproc-per-node")
        args = sys.argv[1:i] + sys.argv[i + 2:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dreamctl", *args]
    console.print("starting: " + " ".join(cmd), markup=False)
    return subprocess.call(cmd)
