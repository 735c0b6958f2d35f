"""`dreamctl sample`: draw numbered images from a run's checkpoint (resumable, torchrun-aware)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dreamctl.cli import options
from dreamctl.cli.common import console
from dreamctl.cli.drawing import drawing

EXAMPLES = """\b
Examples:
  dreamctl sample runs/tiny --num 64 --grid tiny.png
  dreamctl sample runs/tiny --num 5000 --sampler ddpm --checkpoint 1000"""  # under --help; "\\b": not rewrapped

def command(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="The run folder (written by `dreamctl train`)."),
    num: int = typer.Option(..., "--num", "-n", help="Number of images; image i has its own seed, so any batch size gives the same images."),
    sampler: options.Sampler = None,
    steps: options.Steps = None,
    eta: options.Eta = None,
    t_start: options.TStart = None,
    clip_x0: options.ClipX0 = None,
    seed: int = typer.Option(0, "--seed", help="Base seed (0..4095); different base seeds share no image."),
    use_ema: options.Ema = None,
    checkpoint: options.Checkpoint = None,
    batch_size: options.BatchSize = None,
    compile: options.Compile = None,
    compile_mode: options.CompileMode = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: new, empty, or one sample wrote [default: RUN_DIR/samples/<settings>]."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also write the grid of the first 64 images to this new file (an existing one is never replaced)."),
    npz: bool = typer.Option(False, "--npz", help="Also write all images as one uint8 .npz (key 'images')."),
    device: options.Device = None,
) -> None:
    """Draw images from a run's checkpoint into PNGs, a grid and sample.json; rerun to finish a stopped one."""
    opts = options.sample_options(ctx.params)
    from dreamctl import atomic
    from dreamctl.errors import ConfigError
    from dreamctl.generate import save_grid
    from dreamctl.inference import load_for_inference
    from dreamctl.sample_folder import GRID_MAX, folder_name, read_samples, sample_to_folder, write_npz
    from dreamctl.training.rundir import RunDir

    if grid is not None:
        if grid.suffix.lower() != ".png":  # PNG bytes under another name, or a lossy copy of the samples
            raise ConfigError(f"--grid {grid}: the grid is written as PNG (lossless); give a file name ending in .png")
        atomic.check_output_file(grid, "--grid")  # before drawing, not after
    with drawing(device) as (rt, display):
        model = load_for_inference(RunDir(run_dir), opts, rt)
        folder = out or RunDir(run_dir).samples / folder_name(model, seed)
        record = sample_to_folder(model, folder, num, seed=seed, rt=rt, on_event=display.on_event)
        if not rt.is_main:
            return
        # The npz before --grid, which is never replaced: a stop between them leaves a command that a rerun
        # finishes, where a grid already written would make the rerun refuse before it wrote the npz.
        archive = write_npz(folder, read_samples(folder, num, model.image_size)) if npz else None
        if grid is not None:
            save_grid(read_samples(folder, min(num, GRID_MAX), model.image_size), grid)
    c = model.cfg
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731
    say(f"{record['num']} images in {folder} ({record['drawn_now']} drawn now, {record['wall_time_s']} s): "
        f"{c.sampler} {c.steps} steps, eta {c.eta:g}, {'EMA' if c.use_ema else 'raw'} weights of step "
        f"{model.step}, base seed {seed}")
    say(f"grid: {grid or folder / 'grid.png'}")
    if archive is not None:
        say(f"npz: {archive}")
