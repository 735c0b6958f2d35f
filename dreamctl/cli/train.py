"""`dreamctl train`: start a run from a recipe (or --dry-run: show what it would do)."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from dreamctl.cli import options
from dreamctl.cli.common import EXIT_CODES_DIR, console, err_console
from dreamctl.cli.progress import run_training
from dreamctl.config import flat_items, load_recipe, recipe_to_yaml
from dreamctl.errors import DataError


def command(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe: a built-in name (dreamctl/recipes/NAME.yaml) or a YAML path."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data folder (from prepare-data)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Run folder [default: runs/RECIPE-TIME]."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe and the cost; train nothing."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, help="Start this many processes with torchrun."),
    device: options.Device = None,
) -> int:
    """Train a recipe on prepared data into a run folder."""
    overrides = list(set_)
    if data is not None:
        overrides.append(f"data.path={data.resolve()}")
    resolved = load_recipe(recipe, overrides)
    if dry_run:
        return _dry_run(resolved)
    run_dir = run_dir or Path("runs") / f"{resolved.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        from dreamctl.training.rundir import RunDir
        from dreamctl.training.session import check_start

        check_start(resolved, RunDir(run_dir), nproc_per_node)  # bad data, batch or folder: once, here, not per worker
        args = ["train", "--recipe", recipe, "--run-dir", str(run_dir), *_sets(overrides), *_device(device)]
        raise typer.Exit(_launch_torchrun(nproc_per_node, args))  # the workers' exit code is ours

    from dreamctl import runtime
    from dreamctl.training.rundir import RunDir
    from dreamctl.training.session import start_run

    run = RunDir(run_dir)
    rt = runtime.setup(resolved.train.precision, device)
    run_training(run.root, rt, functools.partial(start_run, resolved, run, rt))
    return 0


def _dry_run(recipe) -> int:
    from dreamctl.diffusion.losses import STEP_COST
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
        from dreamctl.data.shards import split_count
        from dreamctl.training.loop import total_steps

        n = split_count(Path(recipe.data.path), recipe.data.split)
        if recipe.data.limit is not None and recipe.data.limit > n:
            raise DataError(f"data.limit {recipe.data.limit} exceeds the {n} images of split {recipe.data.split} "
                            f"of {recipe.data.path}; lower it with --set data.limit=N")
        n = recipe.data.limit or n
        steps = total_steps(recipe, n)
        console.print(f"schedule      {n:,} images, {steps:,} steps of {recipe.train.batch_size} "
                      f"= {steps * recipe.train.batch_size:,} images seen", markup=False)
    return 0


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _device(device: str | None) -> list[str]:
    return ["--device", device] if device else []


def _launch_torchrun(nproc: int, args: list[str]) -> int:
    """Run `dreamctl ARGS` under torchrun (the --nproc-per-node shortcut).

    Ctrl-C and SIGTERM are passed on to torchrun, which stops its workers with SIGTERM (each
    then writes a checkpoint); this process waits for all of them instead of leaving orphans,
    then exits 128 + the signal, as a single process does (torchrun itself would say 1). Workers
    that fail all with one exit code (2: an error the user can fix) make it ours for the same reason.
    """
    import signal
    import subprocess
    import tempfile

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dreamctl", *args]
    console.print("starting: " + " ".join(cmd), markup=False)
    with tempfile.TemporaryDirectory(prefix="dreamctl-exit-") as codes_dir:
        proc = subprocess.Popen(cmd, env={**os.environ, EXIT_CODES_DIR: codes_dir})
        received: list[int] = []

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            code = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if received and code != 0:
            return 128 + received[0]
        return _workers_code(code, Path(codes_dir), nproc)


def _workers_code(code: int, codes_dir: Path, nproc: int) -> int:
    """torchrun's exit code `code`, or the one every worker left in `codes_dir` when they agree.

    Only rank 0 printed its error, so an error that another rank alone hit is printed here.
    """
    import json

    left = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in codes_dir.glob("rank-*.json")}
    said = left.get(0, {}).get("error")
    for rank, worker in sorted(left.items()):
        if worker["error"] and worker["error"] != said:
            err_console.print(f"rank {rank}: error: {worker['error']}", markup=False, highlight=False, soft_wrap=True)
    failed = {w["code"] for w in left.values()} - {0}  # a worker that died with a traceback left no file
    return failed.pop() if code != 0 and len(left) == nproc and len(failed) == 1 else code
