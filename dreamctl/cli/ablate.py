"""`dreamctl ablate SPEC.yaml [--dry-run [--time]] [--seeds 0,1,2] [--nproc-per-node N] [--device D] [--data DIR] [--out DIR] [--set K=V]`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dreamctl.cli import options
from dreamctl.cli.common import console, err_console
from dreamctl.errors import ConfigError, DreamctlError
from dreamctl.signals import exit_code

if TYPE_CHECKING:
    from dreamctl.experiments.ablate import Plan


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        raise ConfigError(f"--seeds '{text}': expected integers separated by commas, e.g. 0,1,2")
    return seeds


def _print_plan(plan: Plan) -> None:
    from dreamctl.experiments.ablate import PLAN_NOTE, count_text, images_text, plan_rows, plan_totals

    spec = plan.spec
    count = images_text(plan) or "not prepared yet: costs from data.limit, else unknown"
    console.print(f"[bold]ablation {spec.name}[/bold]  spec {spec.path}  out {spec.out}", highlight=False)
    recipes = ", ".join(sorted({j.recipe for j in plan.train}))
    console.print(f"recipe: {recipes}; fixed overrides: {' '.join(spec.set) or 'none'}", highlight=False)
    console.print(f"data: {plan.data or 'none given'} ({count})", highlight=False)
    head, rows = plan_rows(plan)
    table = Table(header_style="bold")
    for h in head:
        table.add_column(h, overflow="fold", no_wrap=h in ("job", "action"), justify="left" if h in ("job", "action") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(PLAN_NOTE, style="dim")
    t = plan_totals(plan)
    console.print(f"to train: {t['train_runs']} runs, {count_text(t['train_images'])} images, "
                  f"{count_text(t['train_forwards'])} forward passes (a backward counts as two)", highlight=False)
    console.print(f"to evaluate: {t['eval_runs']} jobs, {count_text(t['eval_images'])} images generated, "
                  f"{count_text(t['eval_forwards'])} network evaluations", highlight=False)


def _print_time(plan: Plan, device: str | None, processes: int) -> None:
    from dreamctl.cli.timing import print_sampling_time, print_training_time

    jobs = [j for j in plan.train if j.action != "skip"]
    runs = [(j.resolved_recipe, j.split_images, j.done) for j in jobs if j.split_images is not None]
    if not jobs:
        console.print("time: nothing to train", highlight=False)
    elif len(runs) < len(jobs):
        console.print("time: unknown until the data is prepared (or data.limit is set)", highlight=False)
    else:
        print_training_time("time: ", runs, device, processes, of=f" of {len(runs)} run{'s' * (len(runs) > 1)}")
    evals = [(e.resolved_recipe, e.forwards) for e in plan.evals if e.action != "skip"]
    if evals:
        print_sampling_time("time to evaluate: ", evals, device)


EXAMPLES = """\b
Examples:
  dreamctl ablate lambda-max --dry-run
  dreamctl ablate my-spec.yaml --data data/celeba64
  dreamctl ablate tiny-methods --set train.max_steps=20 --out runs/ablations/quick   # a quick look"""  # under --help; "\\b": not rewrapped

def command(
    spec: Annotated[str, typer.Argument(help="Ablation spec: a built-in name (lambda-max, methods, tiny-methods, ...) or a YAML path.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and its cost; run nothing.")] = False,
    time_it: Annotated[bool, typer.Option("--time", help="With --dry-run: time a few steps of each kind of run on "
                                          "this device and estimate how long the training and the evaluations' sampling take.")] = False,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds, e.g. 0,1,2 (overrides the spec).")] = None,
    nproc_per_node: Annotated[int | None, typer.Option("--nproc-per-node", min=1, help="Processes per training run (torchrun).")] = None,
    device: options.Device = None,
    data: Annotated[Path | None, typer.Option("--data", help="Prepared data folder (overrides the spec).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (overrides the spec).")] = None,
    set_: Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe key in every run, "
                                            "after the spec's own `set` (repeatable), e.g. train.max_steps=20.")] = [],
) -> None:
    """Run a grid of recipe overrides: train what is new, resume what was interrupted, evaluate, report."""
    from dreamctl import runtime
    from dreamctl.experiments.ablate import make_plan
    from dreamctl.experiments.execute import Launch, execute, preflight
    from dreamctl.experiments.spec import parse_spec

    parsed = parse_spec(spec, seeds=_seeds(seeds), data=str(data) if data else None, out=str(out) if out else None,
                        extra_set=tuple(set_))
    if time_it and not dry_run:
        raise ConfigError("--time goes with --dry-run: add it")
    plan = make_plan(parsed)
    _print_plan(plan)
    if time_it:
        _print_time(plan, device, nproc_per_node or 1)
    if dry_run:  # a plan may come before its data, weights or GPU: what the run would refuse is a warning here
        for check in (lambda: runtime.check_device(device), lambda: preflight(plan)):
            try:
                check()
            except DreamctlError as problem:
                err_console.print(f"warning: {problem} (the run would stop before training)", markup=False,
                                  highlight=False)
        return
    runtime.check_device(device)  # before the first job: every one would fail on it
    try:
        result = execute(plan, launch=Launch(nproc_per_node, device),
                         progress=lambda msg: console.print(f"[bold]{msg}[/bold]", highlight=False))
    except KeyboardInterrupt as stop:  # Ctrl-C, or execute's Stopped (SIGTERM too)
        err_console.print(f"interrupted: the report so far is in {plan.spec.out / 'report.md'}; the same command "
                          "goes on where this one stopped", markup=False, highlight=False)
        raise typer.Exit(exit_code(stop)) from None
    for outcome in result.failures:
        where = f" (log: {outcome.log})" if outcome.log else ""
        err_console.print(f"failed: {outcome.job} ({outcome.action}): {outcome.note}{where}", markup=False, highlight=False)
    console.print(f"report: {result.report}", highlight=False)
    if result.failures:
        raise typer.Exit(1)
