"""`dreamctl prepare-data`: images -> checksummed HDF5 shards; `--verify DIR` re-hashes them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dreamctl.cli.common import console, err_console
from dreamctl.data.decode import parse_crop
from dreamctl.data.prepare import prepare_data
from dreamctl.data.shards import read_manifest, verify
from dreamctl.data.sources import SPLITS, list_source
from dreamctl.errors import DataError
from dreamctl.signals import exit_code, stop_on_sigterm

SHOW_SKIPPED = 5  # skipped items named on screen; all are in the manifest


def _verify(data_dir: Path) -> None:
    problems = verify(data_dir)
    shards = sum(len(v.shards) for v in read_manifest(data_dir).splits.values())
    for line in problems:
        console.print(line, markup=False, highlight=False)
    if problems:
        raise DataError(f"{len(problems)} of {shards} shards in {data_dir} failed verification; re-run the same prepare-data command to rebuild them")
    console.print(f"{data_dir}: all {shards} shards match the manifest", markup=False, highlight=False)


def _given(ctx: typer.Context) -> list[str]:
    """The options set on the command line (or by environment), as the user spells them."""
    # By the source's name: typer vendors click's ParameterSource in a private module.
    return [param.opts[0] for param in ctx.command.params
            if getattr(ctx.get_parameter_source(param.name), "name", "DEFAULT") != "DEFAULT"]


# Shown under --help; "\b" keeps click from rewrapping the lines.
EXAMPLES = """\b
Examples:
  dreamctl prepare-data --source synthetic --count 5000 --resolution 32 --out data/synth32
  dreamctl prepare-data --source celeba --root CELEBA --out data/celeba64    # the study's 64 px, center:178
  dreamctl prepare-data --source folder --root my_images --out data/mine --resolution 64
  dreamctl prepare-data --verify data/celeba64"""

def command(
    ctx: typer.Context,
    source: Annotated[Optional[str], typer.Option(help="celeba | folder | synthetic")] = None,
    root: Annotated[Optional[Path], typer.Option(help="CelebA folder (img_align_celeba/ or its zip + list_eval_partition.txt) or image folder.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to write shards and manifest.json into.")] = None,
    resolution: Annotated[int, typer.Option(min=1, help="Output size in pixels (square).")] = 64,
    crop: Annotated[Optional[str], typer.Option(help="center:178 (CelebA default), center:N, center (folder default), ddim, none.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Keep the first N files of each split, in name order.")] = None,
    count: Annotated[Optional[int], typer.Option(help="Synthetic: how many faces to draw (all splits).")] = None,
    seed: Annotated[int, typer.Option(help="Synthetic: which faces.")] = 0,
    valid_fraction: Annotated[float, typer.Option(help="Folder/synthetic: share of images in the valid split.")] = 0.05,
    test_fraction: Annotated[float, typer.Option(help="Folder/synthetic: share of images in the test split.")] = 0.05,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Decoding processes [default: all cores].")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard file.")] = 5000,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first unreadable image instead of skipping it.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a folder prepared with other settings.")] = False,
    verify_dir: Annotated[Optional[Path], typer.Option("--verify", help="Re-hash every shard of a prepared folder and report mismatches.")] = None,
) -> None:
    """Decode, crop and resize images once into uint8 HDF5 shards with a checksummed manifest."""
    if verify_dir is not None:
        # --verify only reads DIR: an option it would silently ignore (--out, --source) is a mistake.
        if extra := [o for o in _given(ctx) if o != "--verify"]:
            raise DataError(f"--verify takes no other option (got {', '.join(extra)}); run `dreamctl prepare-data "
                            f"--verify {verify_dir}` alone, or prepare data without --verify")
        return _verify(verify_dir)
    if source is None or out is None:
        raise DataError("prepare-data needs --source celeba|folder|synthetic and --out DIR (or --verify DIR)")
    if crop is not None:
        parse_crop(crop)  # before the source is listed, which can take a while
    listing = list_source(source, root, count=count, seed=seed, valid_fraction=valid_fraction,
                          test_fraction=test_fraction, limit=limit)
    sizes = {s: len(listing.splits[s]) for s in SPLITS}
    console.print(f"{listing.kind}: " + ", ".join(f"{s} {n:,}" for s, n in sizes.items()), markup=False, highlight=False)
    columns = (TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    try:  # SIGTERM as Ctrl-C: the worker pool is shut down, not orphaned
        with stop_on_sigterm(), Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("prepare", total=sum(sizes.values()))
            result = prepare_data(
                listing, out, crop=crop, resolution=resolution, shard_size=shard_size, workers=workers,
                strict=strict, overwrite=overwrite, on_progress=lambda p: bar.update(task, completed=p.done),
            )
            bar.update(task, completed=sum(sizes.values()))
    except KeyboardInterrupt as stop:
        err_console.print(f"stopped: finished shards in {out} are kept; re-run the same command to continue",
                          markup=False, highlight=False)
        raise typer.Exit(exit_code(stop)) from None
    console.print(
        f"wrote {result.written:,} images in {result.shards_written} shards ({result.seconds:.1f} s, "
        f"{result.images_per_s:,.0f} img/s); kept {result.reused:,} images in {result.shards_reused} finished shards; "
        f"skipped {result.skipped:,} (listed in {result.out_dir / 'manifest.json'})",
        markup=False, highlight=False,
    )
    if result.skipped:  # the first few, so a user sees what was left out without opening the manifest
        skipped = read_manifest(result.out_dir).skipped
        for item in skipped[:SHOW_SKIPPED]:
            console.print(f"  skipped {item.name}: {item.reason}", markup=False, highlight=False)
        if len(skipped) > SHOW_SKIPPED:
            console.print(f"  ... and {len(skipped) - SHOW_SKIPPED:,} more", markup=False, highlight=False)
