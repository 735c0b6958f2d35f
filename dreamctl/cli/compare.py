"""`dreamctl compare RUN_DIR... [--format table|markdown|latex|csv|json] [--metrics M,...] [--protocol ID] [--plot DIR]`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dreamctl import atomic
from dreamctl.cli.common import console, err_console
from dreamctl.errors import CheckpointError, RunError
from dreamctl.experiments.compare import Comparison, compare_runs
from dreamctl.experiments.runs import read_run
from dreamctl.experiments.tables import (
    describe_protocols,
    info_cells,
    info_headers,
    left_out_line,
    protocol_cells,
    protocol_headers,
    protocol_ids,
    spread_line,
    to_csv,
    to_json,
    to_latex,
    to_markdown,
    with_values,
)
from dreamctl.training.rundir import RunDir


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    latex = "latex"
    csv = "csv"
    json = "json"


def _table(title: str, head: list[str]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for h in head:
        table.add_column(h, overflow="fold")
    return table


def _print_table(comp: Comparison) -> None:
    """Terminal layout: the runs, then one table per protocol (its id and settings in the title)."""
    runs = _table("Runs", info_headers(comp))
    for row in comp.rows:
        runs.add_row(*info_cells(comp, row))
    console.print(runs)
    if comp.aggregate:
        groups = _table("Groups of runs that differ only by train.seed (and log, checkpoint or sample settings)", info_headers(comp, aggregate=True))
        for row in comp.aggregate:
            groups.add_row(*info_cells(comp, row, aggregate=True))
        console.print(groups)
    described = describe_protocols(comp)
    full, comp = comp, with_values(comp)  # the missing: lines below say why a column is left out
    for pid in protocol_ids(full):
        table = _table(f"protocol {pid}\n{described[pid]}", ["run"] + protocol_headers(comp, pid))
        for i, row in enumerate(comp.rows):
            table.add_row(row.label, *protocol_cells(comp, row, pid), end_section=i == len(comp.rows) - 1)
        for row in (r for r in comp.aggregate if len(r.seeds) > 1):
            table.add_row(f"mean ± std: {row.label} (seeds {','.join(map(str, row.seeds))})", *protocol_cells(comp, row, pid))
        console.print(table)
    if comp.protocols:
        console.print("Numbers are comparable only within one protocol.", style="dim")
    for note in comp.notes:
        console.print(f"Note: {note}.", highlight=False, markup=False)
    if legend := spread_line(comp):
        console.print(legend, style="dim", highlight=False, markup=False)
    if left_out := left_out_line(full):
        console.print(left_out, style="dim", highlight=False, markup=False)
    missing = [(row.label, pid, name, m) for row in comp.rows for (pid, name), m in row.metrics.items() if m.missing]
    by_reason: dict[str, list[str]] = {}  # one line per reason: the same absent weights for every run
    for label, pid, name, m in missing:
        if m.evaluated:
            by_reason.setdefault(str(m.missing), []).append(f"{label} {name} @ {pid}")
    for reason, where in by_reason.items():
        cells = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
        console.print(f"missing: {cells}: {reason}", style="yellow", highlight=False, markup=False)
    never = {(label, pid) for label, pid, _, m in missing if not m.evaluated}
    if never:
        console.print(f"({len(never)} run/protocol pairs were never evaluated: shown as —)", style="dim")
    for warning in comp.warnings:
        console.print(f"warning: {warning}", style="red", highlight=False, markup=False)


def _run_folders(paths: list[Path]) -> list[Path]:
    """The paths that are run folders. A shell glob (`runs/*`) also picks up other folders and files:
    those holding neither run.json nor recipe.yaml are skipped with a note; a path that does not exist,
    or a run folder missing one of the two, is an error (from read_run)."""
    keep: list[Path] = []
    for path in paths:
        run = RunDir(path)
        if any(path.resolve() == k.resolve() for k in keep):
            err_console.print(f"skipping {path}: listed twice", markup=False, highlight=False)
        elif path.exists() and not (run.run_file.is_file() or run.recipe_file.is_file()):
            err_console.print(f"skipping {path}: not a run folder (no {run.run_file.name} or {run.recipe_file.name})",
                              markup=False, highlight=False)
        else:
            keep.append(path)
    if not keep:
        raise CheckpointError(f"none of {', '.join(map(str, paths))} is a run folder (`dreamctl train` writes one)")
    return keep


EXAMPLES = """\b
Examples:
  dreamctl compare runs/* --format markdown --plot figures/
  dreamctl compare runs/* --format latex --metrics fid,kid --protocol ddim50-eta0-ema-n5000-train5000-clean"""  # under --help; "\\b": not rewrapped

def command(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run folders to compare.", show_default=False)],
    format: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write PNG figures into this folder (replacing earlier figures of dreamctl, never other files).")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Comma list of the metrics to show (fid,kid,is,lpips,swd,pixel_fd) [default: all evaluated].", show_default=False)] = None,
    protocol: Annotated[list[str] | None, typer.Option("--protocol", help="Show only this protocol's columns (its id as the tables print it); repeatable [default: all].", show_default=False)] = None,
) -> None:
    """Compare runs: settings that differ, throughput, and metrics grouped by evaluation protocol."""
    if plot is not None:  # a file in the way: refused before anything is written, the table included (a
        # redirected table would look whole beside a failed command)
        from dreamctl.experiments.plots import foreign_figures  # matplotlib: only when plotting

        atomic.check_folder_path(plot, "--plot")
        if theirs := foreign_figures(plot):
            raise RunError(f"figure {theirs[0]} exists and is not an earlier output of this command; move it away "
                           "or choose another --plot folder")
    runs = [read_run(path) for path in _run_folders(run_dirs)]
    comp = compare_runs(runs, metrics=None if metrics is None else metrics.split(","), protocols=protocol)
    if format == Format.table:
        _print_table(comp)
    elif format == Format.markdown:
        typer.echo(to_markdown(comp), nl=False)
    elif format == Format.latex:
        typer.echo(to_latex(comp), nl=False)
    elif format == Format.csv:
        typer.echo(to_csv(comp), nl=False)
        for note in comp.notes:  # the other formats carry them; a CSV has no place for them
            err_console.print(f"note: {note}", markup=False, highlight=False)
        for warning in comp.warnings:
            err_console.print(f"warning: {warning}", markup=False, highlight=False)
    else:
        typer.echo(json.dumps(to_json(comp), indent=2))
    if plot is not None:
        from dreamctl.experiments.plots import write_figures  # matplotlib: only when plotting

        for path in write_figures(runs, plot, comp):
            typer.echo(f"wrote {path}", err=True)
